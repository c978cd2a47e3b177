// Moving blocks between the host tier and a GPU tier.  A GPU block stores every tensor raw
// in its own dtype (fp16/bf16 as put, bit-exact); its host copy has the namespace's host
// format (NF4 for float tensors by default).  The device does the conversion both ways
// (tiers/gpu/device_backend.h: dequantize_into / quantize_from).
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "common/layout.h"
#include "kvtier/status.h"
#include "config/config.h"
#include "engine/block_codec.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier {

// Puts that may land in a GPU tier: every tensor fp16 or bf16.
bool gpu_eligible(const BlockLayout& client);

// The raw (decoded) layout of a block, 64-byte aligned offsets.  Tensors decoded from NF4
// carry checksum 0 (the device does not hash them); raw tensors keep theirs.
BlockLayout plan_gpu_layout(const BlockLayout& host);

// A put of a GPU tier block: the staged tensors (laid out as `client`, which plan_gpu_layout
// keeps) into the pool at `offset`, checksums in `stored` filled from the staged bytes.
Status seal_to_gpu(gpu::DevicePool& pool, const BlockLayout& client, const std::byte* staging,
                   BlockLayout& stored, uint64_t offset);

// Host block (leased: its bytes stay put) -> pool at `offset`, laid out as `gpu`.
Status promote_block(gpu::DevicePool& pool, const BlockLayout& host, const std::byte* host_bytes,
                     const BlockLayout& gpu, uint64_t offset);

// Many promote_block()s, one Status each: every block is checked first, and the NF4 tensors
// of all of them go to the device in one DevicePool::dequantize_batch (on CUDA: every kernel
// queued, one synchronisation).
struct GpuPromotion {
  const BlockLayout* host = nullptr;
  const std::byte* host_bytes = nullptr;
  const BlockLayout* gpu = nullptr;
  uint64_t offset = 0;
};
std::vector<Status> promote_blocks(gpu::DevicePool& pool, std::span<const GpuPromotion> blocks);

// promote_blocks without waiting for the device's decodes (DevicePool::dequantize_batch_async):
// `done` says what was refused or failed to queue; when `event` is not 0 the decodes are in
// flight until the pool's handler is called with `ticket`, and the host bytes must stay put
// until then.  Raw tensors and outlier-channel decodes are written before it returns.
struct AsyncPromotion {
  std::vector<Status> done;
  uint32_t event = 0;
  uint64_t ticket = 0;
};
AsyncPromotion promote_blocks_async(gpu::DevicePool& pool, std::span<const GpuPromotion> blocks);

// Pool block at `offset` -> `dest` laid out as `host` (checksums filled in), NF4 tensors
// encoded with the namespace's options.  Key tensors with outlier channels are read back and
// encoded on the CPU (the device kernels have none); the rest are quantized on the device.
Status demote_block(gpu::DevicePool& pool, const BlockLayout& gpu, uint64_t offset,
                    BlockLayout& host, std::byte* dest, const Nf4Options& opts);

// Many demote_block()s, one Status each: the NF4 tensors of all of them are quantized in one
// DevicePool::quantize_batch (on CUDA: up to 16 tensors per launch, one synchronisation).
struct GpuDemotion {
  const BlockLayout* gpu = nullptr;
  uint64_t offset = 0;
  BlockLayout* host = nullptr;
  std::byte* dest = nullptr;
  const Nf4Options* opts = nullptr;
};
std::vector<Status> demote_blocks(gpu::DevicePool& pool, std::span<const GpuDemotion> blocks);

}  // namespace kvtier
