#include "engine/block_codec.h"

#include <cstring>

#include "kernels/nf4.h"

namespace kvtier {
namespace {

bool is_float(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32;
}

nf4::Params nf4_params(const TensorLayout& t, bool double_quant) {
  return nf4::Params{t.dtype, t.nf4_layout, double_quant, t.rows(), t.cols()};
}

}  // namespace

BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule& rule) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : client.tensors) {
    TensorLayout s = t;
    s.offset = off;
    s.checksum = 0;
    // NF4 namespaces store float tensors as NF4; integer tensors (token ids, masks) stay raw.
    // Fusion tensors (a GPU block's copy down carries them) follow fusion_codec.
    const Codec codec = is_fusion_tensor(t.name) ? rule.fusion_codec : rule.codec;
    if (codec == Codec::kNf4 && is_float(t.dtype) && t.name != kFusionMetadata) {
      s.codec = Codec::kNf4;
      s.bytes = nf4::encoded_size(nf4_params(t, rule.nf4_double_quant));
    } else {
      s.codec = Codec::kRaw;
      s.nf4_layout = Nf4Layout::kRowBlocks;
      s.bytes = t.raw_bytes;
    }
    off = align_up(off + s.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(s));
  }
  out.total_bytes = std::max<uint64_t>(off, 1);
  return out;
}

Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest, bool double_quant) {
  for (size_t i = 0; i < client.tensors.size(); ++i) {
    const TensorLayout& in = client.tensors[i];
    TensorLayout& out = stored.tensors[i];
    std::byte* dst = dest + out.offset;
    if (out.codec == Codec::kNf4) {
      Status st = nf4::encode(nf4_params(in, double_quant), {staging + in.offset, in.raw_bytes},
                              {dst, out.bytes});
      if (!st) return error(st.code(), "tensor '" + in.name + "': " + st.message());
    } else {
      std::memcpy(dst, staging + in.offset, in.raw_bytes);
    }
    out.checksum = checksum64(dst, out.bytes);
  }
  return {};
}

BlockLayout plan_fusion_layout(const BlockLayout& base, const BlockLayout& fusion_client,
                               const config::NamespaceRule& rule, uint64_t metadata_bytes) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : base.tensors) {
    if (is_fusion_tensor(t.name)) continue;  // the previous fusion state is replaced
    TensorLayout s = t;
    s.offset = off;
    off = align_up(off + s.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(s));
  }
  config::NamespaceRule fusion_rule = rule;
  fusion_rule.codec = rule.fusion_codec;
  for (auto t : plan_stored_layout(fusion_client, fusion_rule).tensors) {
    t.name = std::string(kFusionPrefix) + t.name;
    t.offset = off;
    off = align_up(off + t.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(t));
  }
  if (metadata_bytes > 0) {
    TensorLayout m;
    m.name = std::string(kFusionMetadata);
    m.dtype = DType::kU8;
    m.shape = {metadata_bytes};
    m.codec = Codec::kRaw;
    m.offset = off;
    m.bytes = m.raw_bytes = metadata_bytes;
    off = align_up(off + m.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(m));
  }
  out.total_bytes = std::max<uint64_t>(off, 1);
  return out;
}

Status encode_fusion_block(const BlockLayout& base, const std::byte* base_bytes,
                           const BlockLayout& fusion_client, const std::byte* staging,
                           std::span<const std::byte> metadata, const config::NamespaceRule& rule,
                           BlockLayout& stored, std::byte* dest) {
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
  Status st = encode_block(fusion_client, staging, fusion_stored, dest,
                           rule.fusion_codec == Codec::kNf4 && rule.nf4_double_quant);
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
