#include "engine/block_codec.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/nf4.h"

namespace kvtier {
namespace {

bool is_float(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32;
}

// A source element as float (any alignment).
float source_value(DType t, const std::byte* p) {
  if (t == DType::kF32) {
    float f;
    std::memcpy(&f, p, sizeof f);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  if (t == DType::kBF16) return std::bit_cast<float>(uint32_t(h) << 16);
  // IEEE half.
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float f = std::ldexp(float(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

}  // namespace

Nf4Options nf4_options(const config::NamespaceRule& rule) {
  return Nf4Options{rule.nf4_double_quant, rule.nf4_outlier_channels};
}

bool is_key_tensor(std::string_view name) {
  const size_t slash = name.rfind('/');
  if (slash != std::string_view::npos) name.remove_prefix(slash + 1);
  return name == "k" || name.starts_with("k.");
}

nf4::Params nf4_params(const TensorLayout& t, const Nf4Options& opts) {
  nf4::Params p{t.dtype, t.nf4_layout, opts.double_quant, t.rows(), t.cols()};
  if (opts.outlier_channels > 0 && is_key_tensor(t.name) && t.cols() >= 16) {
    // The N largest channels, whatever their ratio to the median (a count, not a threshold).
    p.keep_outlier_channels = true;
    p.outlier_ratio = 0.0f;
    p.max_outlier_channels = opts.outlier_channels;
  }
  return p;
}

BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule& rule) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : client.tensors) {
    TensorLayout s = t;
    s.checksum = 0;
    // NF4 namespaces store float tensors as NF4; integer tensors (token ids, masks) stay raw.
    // Fusion tensors (a GPU block's copy down carries them) follow fusion_codec.
    const Codec codec = is_fusion_tensor(t.name) ? rule.fusion_codec : rule.codec;
    if (codec == Codec::kNf4 && is_float(t.dtype) && t.name != kFusionMetadata) {
      s.codec = Codec::kNf4;
      s.bytes = nf4::encoded_size(nf4_params(t, nf4_options(rule)));
    } else {
      s.codec = Codec::kRaw;
      s.nf4_layout = Nf4Layout::kRowBlocks;
      s.bytes = t.raw_bytes;
    }
    s.offset = align_up(off, stored_alignment(s.codec));
    off = s.offset + s.bytes;
    out.tensors.push_back(std::move(s));
  }
  out.total_bytes = std::max<uint64_t>(align_up(off, kNf4TensorAlignment), 1);
  return out;
}

Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest, const Nf4Options& opts, CodecCounters* counters) {
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < client.tensors.size(); ++i) {
    const TensorLayout& in = client.tensors[i];
    TensorLayout& out = stored.tensors[i];
    std::byte* dst = dest + out.offset;
    if (out.codec == Codec::kNf4) {
      Status st =
          nf4::encode(nf4_params(in, opts), {staging + in.offset, in.raw_bytes}, {dst, out.bytes});
      if (!st) {
        if (counters) counters->failed();
        return error(st.code(), "tensor '" + in.name + "': " + st.message());
      }
    } else {
      std::memcpy(dst, staging + in.offset, in.raw_bytes);
    }
    out.checksum = checksum64(dst, out.bytes);
  }
  if (counters) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - start);
    counters->encoded(stored, static_cast<uint64_t>(ns.count()));
  }
  return {};
}

Result<Nf4Error> measure_nf4_error(const BlockLayout& client, const std::byte* staging,
                                   const BlockLayout& stored, const std::byte* dest) {
  Nf4Error e;
  std::vector<float> decoded;
  for (size_t i = 0; i < client.tensors.size() && i < stored.tensors.size(); ++i) {
    const TensorLayout& in = client.tensors[i];
    const TensorLayout& out = stored.tensors[i];
    if (out.codec != Codec::kNf4 || !is_float(in.dtype)) continue;
    const uint64_t n = in.elements();
    decoded.resize(n);
    Status st = nf4::decode({dest + out.offset, out.bytes}, DType::kF32,
                            std::as_writable_bytes(std::span(decoded)));
    if (!st) return error(Errc::kCorrupt, "tensor '" + in.name + "': " + st.message());
    const std::byte* src = staging + in.offset;
    const size_t size = dtype_size(in.dtype);
    for (uint64_t k = 0; k < n; ++k) {
      const double err =
          std::fabs(double(decoded[k]) - double(source_value(in.dtype, src + k * size)));
      e.max_abs = std::max(e.max_abs, err);
      e.sum_abs += err;
    }
    e.values += n;
    ++e.tensors;
  }
  return e;
}

BlockLayout plan_fusion_layout(const BlockLayout& base, const BlockLayout& fusion_client,
                               const config::NamespaceRule& rule, uint64_t metadata_bytes) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : base.tensors) {
    if (is_fusion_tensor(t.name)) continue;  // the previous fusion state is replaced
    TensorLayout s = t;
    s.offset = align_up(off, stored_alignment(s.codec));
    off = s.offset + s.bytes;
    out.tensors.push_back(std::move(s));
  }
  config::NamespaceRule fusion_rule = rule;
  fusion_rule.codec = rule.fusion_codec;
  for (auto t : plan_stored_layout(fusion_client, fusion_rule).tensors) {
    t.name = std::string(kFusionPrefix) + t.name;
    t.offset = align_up(off, stored_alignment(t.codec));
    off = t.offset + t.bytes;
    out.tensors.push_back(std::move(t));
  }
  if (metadata_bytes > 0) {
    TensorLayout m;
    m.name = std::string(kFusionMetadata);
    m.dtype = DType::kU8;
    m.shape = {metadata_bytes};
    m.codec = Codec::kRaw;
    m.offset = align_up(off, kTensorAlignment);
    m.bytes = m.raw_bytes = metadata_bytes;
    off = m.offset + m.bytes;
    out.tensors.push_back(std::move(m));
  }
  out.total_bytes = std::max<uint64_t>(align_up(off, kNf4TensorAlignment), 1);
  return out;
}

Status encode_fusion_block(const BlockLayout& base, const std::byte* base_bytes,
                           const BlockLayout& fusion_client, const std::byte* staging,
                           std::span<const std::byte> metadata, const config::NamespaceRule& rule,
                           BlockLayout& stored, std::byte* dest, CodecCounters* counters) {
  size_t i = 0;
  for (const auto& t : base.tensors) {
    if (is_fusion_tensor(t.name)) continue;
    TensorLayout& out = stored.tensors[i++];
    std::memcpy(dest + out.offset, base_bytes + t.offset, t.bytes);
    out.checksum = checksum64(dest + out.offset, out.bytes);
  }
  // The fusion tensors: a sub-layout whose offsets point into the new block.
  BlockLayout fusion_stored;
  const size_t first_fusion = i;
  for (size_t j = 0; j < fusion_client.tensors.size(); ++j)
    fusion_stored.tensors.push_back(stored.tensors[first_fusion + j]);
  Status st =
      encode_block(fusion_client, staging, fusion_stored, dest, nf4_options(rule), counters);
  if (!st) return st;
  for (size_t j = 0; j < fusion_client.tensors.size(); ++j)
    stored.tensors[first_fusion + j].checksum = fusion_stored.tensors[j].checksum;
  if (!metadata.empty()) {
    TensorLayout& m = stored.tensors.back();
    std::memcpy(dest + m.offset, metadata.data(), metadata.size());
    m.checksum = checksum64(dest + m.offset, m.bytes);
  }
  return {};
}

}  // namespace kvtier
