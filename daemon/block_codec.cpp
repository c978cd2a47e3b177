#include "daemon/block_codec.h"

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
    if (rule.codec == Codec::kNf4 && is_float(t.dtype)) {
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

}  // namespace kvtier
