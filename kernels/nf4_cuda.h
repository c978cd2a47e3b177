// NF4 on the GPU: the same encoding as kvtier::nf4::encode/decode, byte for byte.
// Pointers are device memory or host memory registered with the CUDA runtime (mapped, so the
// device can address it); streams are cudaStream_t passed as void* (nullptr = default stream).
// In a build without CUDA (KVTIER_HAVE_CUDA undefined) every call returns kUnavailable.
//
// Batches run each step of many tensors in one launch (kernels/nf4_cuda_batch.h: up to 16
// tensors per launch), so a batch costs a few launches and one synchronisation, not a few per
// tensor.
#pragma once

#include <span>
#include <vector>

#include "kvtier/status.h"
#include "kernels/nf4.h"

namespace kvtier::nf4::cuda {

// True when built with CUDA and the runtime sees at least one device.
bool available();

// One tensor of quantize_batch: p.rows*p.cols elements of p.dtype at src (aligned to the
// element size) -> encoded_size(p) bytes at dst (16-byte aligned).
struct EncodeOp {
  Params p;
  const void* src = nullptr;
  void* dst = nullptr;
};

// Encodes every op on `stream` and synchronises it once; one Status per op.
// kInvalidArgument for NaN/Inf input (nothing is written to that op's dst) or a scale too
// large for double quant (its dst is written with a cleared header, so it does not parse),
// for keep_outlier_channels (CPU only) and for misaligned pointers; kUnavailable when there is
// no driver or device.  A CUDA failure fails every op of the batch.
std::vector<Status> quantize_batch(std::span<const EncodeOp> ops, void* stream);

// quantize_batch of one.
Status quantize(const Params& p, const void* src, void* dst, void* stream);

// One tensor of dequantize_batch: the encoding at `encoded` (device-visible, 16-byte aligned)
// whose header, parsed on the host, is h -> rows*cols elements of out_dtype at dst.
struct DecodeOp {
  Header h;
  const void* encoded = nullptr;
  DType out_dtype = DType::kF16;
  void* dst = nullptr;
};

// Queues the decode of every op on `stream` (a launch per 16 tensors), no synchronisation.
// One Status per op: ops refused by the checks (dtype, outlier channels, alignment) are
// skipped, a CUDA failure fails every op that was not refused.  Scales are not re-validated
// on the device: pass encodings that came from encode() or passed parse_header()/decode()
// checks and the tier's checksum.
std::vector<Status> dequantize_batch(std::span<const DecodeOp> ops, void* stream);

// dequantize_batch of one.
Status dequantize(const Header& h, const void* encoded, DType out_dtype, void* dst, void* stream);

}  // namespace kvtier::nf4::cuda
