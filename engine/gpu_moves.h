// Moving blocks between the host tier and a GPU tier.  A GPU block stores every tensor raw
// in its own dtype (fp16/bf16 as put, bit-exact); its host copy has the namespace's host
// format (NF4 for float tensors by default).  The device does the conversion both ways
// (tiers/gpu/device_backend.h: dequantize_into / quantize_from).
#pragma once

#include <cstddef>

#include "common/layout.h"
#include "kvtier/status.h"
#include "config/config.h"
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

// Pool block at `offset` -> `dest` laid out as `host` (checksums filled in).
Status demote_block(gpu::DevicePool& pool, const BlockLayout& gpu, uint64_t offset,
                    BlockLayout& host, std::byte* dest, bool double_quant);

}  // namespace kvtier
