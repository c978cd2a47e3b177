#include "daemon/block_codec.h"

#include <cstring>

namespace kvtier {

BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule&) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : client.tensors) {
    TensorLayout s = t;
    s.codec = Codec::kRaw;
    s.offset = off;
    s.bytes = t.raw_bytes;
    s.checksum = 0;
    off = align_up(off + s.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(s));
  }
  out.total_bytes = std::max<uint64_t>(off, 1);
  return out;
}

Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest) {
  for (size_t i = 0; i < client.tensors.size(); ++i) {
    const TensorLayout& in = client.tensors[i];
    TensorLayout& out = stored.tensors[i];
    std::memcpy(dest + out.offset, staging + in.offset, in.raw_bytes);
    out.checksum = checksum64(dest + out.offset, out.bytes);
  }
  return {};
}

}  // namespace kvtier
