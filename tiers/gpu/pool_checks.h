// Argument checks every DevicePool implementation makes before it touches memory, so the
// emulation refuses exactly what the CUDA backend refuses (tests on the emulation then hold
// for the GPU).
#pragma once

#include <cstdint>
#include <span>

#include "kvtier/status.h"
#include "kernels/nf4.h"

namespace kvtier::gpu {

// [offset, offset + bytes) inside a pool of `pool_bytes` on `device`; kInvalidArgument if not.
Status check_range(const char* op, int device, uint64_t offset, uint64_t bytes,
                   uint64_t pool_bytes);

// A device-to-device copy of `bytes` from [src_offset) of a pool of `src_bytes` to
// [dst_offset) of a pool of `dst_bytes`; `same_pool`: overlapping ranges are refused.
Status check_copy(int device, uint64_t src_offset, uint64_t src_bytes, uint64_t dst_offset,
                  uint64_t dst_bytes, uint64_t bytes, bool same_pool);

// The parsed header of `encoded` when its decoding (rows*cols out_dtype elements) fits at
// `offset`.  Outlier channels are refused (the CUDA kernels do not support them).
Result<nf4::Header> check_dequantize(std::span<const std::byte> encoded, DType out_dtype,
                                     uint64_t offset, int device, uint64_t pool_bytes);

// encoded_size(p) when p is valid, its source fits at `offset` and `dst_bytes` can hold the
// encoding.  Outlier channels are refused, as above.
Result<uint64_t> check_quantize(const nf4::Params& p, uint64_t offset, uint64_t dst_bytes,
                                int device, uint64_t pool_bytes);

}  // namespace kvtier::gpu
