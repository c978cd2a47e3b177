#include "engine/gpu_moves.h"

#include <string>
#include <vector>

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

namespace {

// Checks a host block against its GPU layout and copies what needs no kernel (raw tensors,
// NF4 with outlier channels decoded on the CPU); the NF4 tensors the device decodes are added
// to `ops`.
Status plan_promotion(gpu::DevicePool& pool, const BlockLayout& host, const std::byte* host_bytes,
                      const BlockLayout& gpu, uint64_t offset, std::vector<gpu::DequantizeOp>& ops,
                      std::vector<std::string>& names) {
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
    bool outliers = false;
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
      outliers = hdr->params.keep_outlier_channels;
    } else if (h.bytes != g.bytes) {
      return error(Errc::kCorrupt, "tensor '" + h.name + "': " + std::to_string(h.bytes) +
                                       " stored bytes for a place of " + std::to_string(g.bytes));
    }
    Status st;
    if (h.codec == Codec::kNf4 && outliers) {
      // The device kernels have no outlier channels (nf4_outlier_channels namespaces): decode
      // on the CPU, then copy the fp16/bf16 result.
      std::vector<std::byte> decoded(g.bytes);
      st = nf4::decode(src, g.dtype, decoded);
      if (st) st = pool.write(offset + g.offset, decoded);
    } else if (h.codec == Codec::kNf4) {
      ops.push_back({src, g.dtype, offset + g.offset});
      names.push_back(h.name);
    } else {
      st = pool.write(offset + g.offset, src);
    }
    if (!st) return error(st.code(), "tensor '" + h.name + "' to gpu: " + st.message());
  }
  return {};
}

}  // namespace

Status promote_block(gpu::DevicePool& pool, const BlockLayout& host, const std::byte* host_bytes,
                     const BlockLayout& gpu, uint64_t offset) {
  const GpuPromotion one{&host, host_bytes, &gpu, offset};
  return promote_blocks(pool, std::span(&one, 1)).front();
}

namespace {

AsyncPromotion promote(gpu::DevicePool& pool, std::span<const GpuPromotion> blocks, bool async) {
  AsyncPromotion r;
  r.done.resize(blocks.size());
  std::vector<gpu::DequantizeOp> ops;
  std::vector<std::string> names;
  std::vector<size_t> owner;  // the block of each op
  for (size_t b = 0; b < blocks.size(); ++b) {
    const size_t before = ops.size();
    r.done[b] = plan_promotion(pool, *blocks[b].host, blocks[b].host_bytes, *blocks[b].gpu,
                               blocks[b].offset, ops, names);
    if (!r.done[b]) {  // nothing of a block that failed goes to the device
      ops.resize(before);
      names.resize(before);
    }
    owner.resize(ops.size(), b);
  }
  gpu::AsyncBatch batch;
  if (async && !ops.empty()) {
    batch = pool.dequantize_batch_async(ops);
  } else {
    batch.queued = pool.dequantize_batch(ops);
  }
  r.event = batch.event;
  r.ticket = batch.ticket;
  for (size_t i = 0; i < ops.size(); ++i)
    if (!batch.queued[i] && r.done[owner[i]])
      r.done[owner[i]] = error(batch.queued[i].code(),
                               "tensor '" + names[i] + "' to gpu: " + batch.queued[i].message());
  return r;
}

}  // namespace

std::vector<Status> promote_blocks(gpu::DevicePool& pool, std::span<const GpuPromotion> blocks) {
  return promote(pool, blocks, false).done;
}

AsyncPromotion promote_blocks_async(gpu::DevicePool& pool, std::span<const GpuPromotion> blocks) {
  return promote(pool, blocks, true);
}

Status demote_block(gpu::DevicePool& pool, const BlockLayout& gpu, uint64_t offset,
                    BlockLayout& host, std::byte* dest, const Nf4Options& opts) {
  const GpuDemotion one{&gpu, offset, &host, dest, &opts};
  return demote_blocks(pool, std::span(&one, 1)).front();
}

std::vector<Status> demote_blocks(gpu::DevicePool& pool, std::span<const GpuDemotion> blocks) {
  std::vector<Status> out(blocks.size());
  std::vector<gpu::QuantizeOp> ops;
  struct Owner {
    size_t block = 0, tensor = 0;
  };
  std::vector<Owner> owner;  // of each op
  for (size_t b = 0; b < blocks.size(); ++b) {
    const GpuDemotion& d = blocks[b];
    const size_t before = ops.size();
    for (size_t i = 0; i < d.gpu->tensors.size(); ++i) {
      const TensorLayout& g = d.gpu->tensors[i];
      TensorLayout& h = d.host->tensors[i];
      std::span<std::byte> dst(d.dest + h.offset, h.bytes);
      const nf4::Params p = nf4_params(g, *d.opts);
      Status st;
      if (h.codec != Codec::kNf4) {
        st = pool.read(d.offset + g.offset, dst);
      } else if (p.keep_outlier_channels) {
        std::vector<std::byte> raw(g.bytes);
        st = pool.read(d.offset + g.offset, raw);
        if (st) st = nf4::encode(p, raw, dst);
      } else {
        ops.push_back({p, d.offset + g.offset, dst});
        owner.push_back({b, i});
        continue;  // its checksum once the batch is done
      }
      if (!st) {
        out[b] = error(st.code(), "tensor '" + g.name + "' from gpu: " + st.message());
        break;
      }
      h.checksum = checksum64(dst.data(), dst.size());
    }
    if (!out[b]) {  // nothing of a block that failed goes to the device
      ops.resize(before);
      owner.resize(before);
    }
  }
  const std::vector<Status> done = pool.quantize_batch(ops);
  for (size_t k = 0; k < ops.size(); ++k) {
    const GpuDemotion& d = blocks[owner[k].block];
    Status& o = out[owner[k].block];
    if (!o) continue;
    const TensorLayout& g = d.gpu->tensors[owner[k].tensor];
    if (!done[k]) {
      o = error(done[k].code(), "tensor '" + g.name + "' from gpu: " + done[k].message());
      continue;
    }
    d.host->tensors[owner[k].tensor].checksum = checksum64(ops[k].dst.data(), ops[k].dst.size());
  }
  return out;
}

}  // namespace kvtier
