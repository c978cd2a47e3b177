// NF4 on the GPU: the same encoding as kvtier::nf4::encode/decode, byte for byte.
// Pointers are device memory or host memory registered with the CUDA runtime (mapped, so the
// device can address it); streams are cudaStream_t passed as void* (nullptr = default stream).
// In a build without CUDA (KVTIER_HAVE_CUDA undefined) every call returns kUnavailable.
#pragma once

#include "kvtier/status.h"
#include "kernels/nf4.h"

namespace kvtier::nf4::cuda {

// True when built with CUDA and the runtime sees at least one device.
bool available();

// Encodes p.rows*p.cols elements at src (aligned to the element size) into dst
// (encoded_size(p) bytes, 16-byte aligned).  Synchronises `stream` once after the absmax pass
// so that NaN/Inf input is reported (kInvalidArgument) before dst is written; the rest is
// queued on `stream`.  kUnavailable when there is no driver or device; kInvalidArgument
// for keep_outlier_channels (CPU only), in dequantize too.
Status quantize(const Params& p, const void* src, void* dst, void* stream);

// Decodes the encoding at `encoded` (device-visible, 16-byte aligned) whose header, parsed
// on the host, is h, into dst (rows*cols elements of out_dtype).  Queued on `stream`, no
// synchronisation.  Scales are not re-validated on the device: pass encodings that came
// from encode() or passed parse_header()/decode() checks and the tier's checksum.
Status dequantize(const Header& h, const void* encoded, DType out_dtype, void* dst, void* stream);

}  // namespace kvtier::nf4::cuda
