#include "engine/gpu_moves.h"

#include "kernels/nf4.h"

namespace kvtier {

bool gpu_eligible(const BlockLayout& client) {
  for (const auto& t : client.tensors)
    if (t.dtype != DType::kF16 && t.dtype != DType::kBF16) return false;
  return !client.tensors.empty();
}

BlockLayout plan_gpu_layout(const BlockLayout& host) {
  BlockLayout out;
  uint64_t off = 0;
  for (const auto& t : host.tensors) {
    TensorLayout g = t;
    g.offset = off;
    g.bytes = t.raw_bytes;
    if (t.codec != Codec::kRaw) g.checksum = 0;
    g.codec = Codec::kRaw;
    g.nf4_layout = t.nf4_layout;  // kept: a copy down quantizes along the same axis again
    off = align_up(off + g.bytes, kTensorAlignment);
    out.tensors.push_back(std::move(g));
  }
  out.total_bytes = std::max<uint64_t>(off, 1);
  return out;
}

Status seal_to_gpu(gpu::DevicePool& pool, const BlockLayout& client, const std::byte* staging,
                   BlockLayout& stored, uint64_t offset) {
  // One copy for the whole block: the stored layout is the staged one.
  if (Status st = pool.write(offset, {staging, client.total_bytes}); !st)
    return error(st.code(), "block to gpu: " + st.message());
  // Staging is client-writable: hash what was copied would need a read back from the device,
  // so the checksum is of the staged bytes (a client racing its own put only fools itself).
  for (size_t i = 0; i < client.tensors.size(); ++i)
    stored.tensors[i].checksum =
        checksum64(staging + client.tensors[i].offset, client.tensors[i].raw_bytes);
  return {};
}

Status promote_block(gpu::DevicePool& pool, const BlockLayout& host, const std::byte* host_bytes,
                     const BlockLayout& gpu, uint64_t offset) {
  if (host.tensors.size() != gpu.tensors.size())
    return error(Errc::kInvalidArgument, "block to gpu: layouts of different tensor counts");
  for (size_t i = 0; i < host.tensors.size(); ++i) {
    const TensorLayout& h = host.tensors[i];
    const TensorLayout& g = gpu.tensors[i];
    // The host layout may come from the disk tier's index: what the bytes would fill must be
    // exactly the tensor's place in the GPU layout, or the copy would overwrite its
    // neighbours in the pool (found by fuzz/fuzz_nf4.cpp).
    if (h.offset > host.total_bytes || h.bytes > host.total_bytes - h.offset)
      return error(Errc::kCorrupt, "tensor '" + h.name + "' extends past its block");
    std::span<const std::byte> src(host_bytes + h.offset, h.bytes);
    if (h.codec == Codec::kNf4) {
      auto hdr = nf4::parse_header(src);
      if (!hdr) return error(Errc::kCorrupt, "tensor '" + h.name + "': " + hdr.status().message());
      const uint64_t size = dtype_size(g.dtype);
      uint64_t values = 0;
      if (size == 0 || __builtin_mul_overflow(hdr->params.rows, hdr->params.cols, &values) ||
          values != g.bytes / size || g.bytes % size != 0)
        return error(Errc::kCorrupt, "tensor '" + h.name + "': its NF4 encoding holds " +
                                         std::to_string(hdr->params.rows) + " x " +
                                         std::to_string(hdr->params.cols) +
                                         " values, its layout says " + std::to_string(g.bytes) +
                                         " bytes");
    } else if (h.bytes != g.bytes) {
      return error(Errc::kCorrupt, "tensor '" + h.name + "': " + std::to_string(h.bytes) +
                                       " stored bytes for a place of " + std::to_string(g.bytes));
    }
    Status st = h.codec == Codec::kNf4 ? pool.dequantize_into(src, g.dtype, offset + g.offset)
                                       : pool.write(offset + g.offset, src);
    if (!st) return error(st.code(), "tensor '" + h.name + "' to gpu: " + st.message());
  }
  return {};
}

Status demote_block(gpu::DevicePool& pool, const BlockLayout& gpu, uint64_t offset,
                    BlockLayout& host, std::byte* dest, bool double_quant) {
  for (size_t i = 0; i < gpu.tensors.size(); ++i) {
    const TensorLayout& g = gpu.tensors[i];
    TensorLayout& h = host.tensors[i];
    std::span<std::byte> dst(dest + h.offset, h.bytes);
    Status st = h.codec == Codec::kNf4
                    ? pool.quantize_from(
                          nf4::Params{g.dtype, g.nf4_layout, double_quant, g.rows(), g.cols()},
                          offset + g.offset, dst)
                    : pool.read(offset + g.offset, dst);
    if (!st) return error(st.code(), "tensor '" + g.name + "' from gpu: " + st.message());
    h.checksum = checksum64(dst.data(), dst.size());
  }
  return {};
}

}  // namespace kvtier
