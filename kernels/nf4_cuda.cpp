// Host side of the NF4 CUDA path: validation, planning, and the one place where CUDA errors
// become Status.
#include "kernels/nf4_cuda.h"

#include <string>

#include "kernels/nf4_cuda_launch.h"
#include "kernels/nf4_cuda_args.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4::cuda {
namespace {

// cudaError_t values (driver_types.h) that mean "no usable GPU here" or "out of memory".
constexpr int kCudaErrorMemoryAllocation = 2;
constexpr int kCudaErrorNoDevice = 100;
constexpr int kCudaErrorInsufficientDriver = 35;
constexpr int kCudaErrorInvalidValue = 1;

Status to_status(const detail::LaunchResult& r) {
  if (r.cuda_error == 0) {
    if (r.bad_input) {
      return error(Errc::kInvalidArgument,
                   "nf4 cuda: input contains NaN or Inf (or is too large for double quant)");
    }
    return Status::ok();
  }
  std::string msg = std::string("nf4 cuda: ") + r.where + ": " + detail::error_string(r.cuda_error);
  switch (r.cuda_error) {
    case kCudaErrorNoDevice:
    case kCudaErrorInsufficientDriver:
      return error(Errc::kUnavailable, msg);
    case kCudaErrorMemoryAllocation:
      return error(Errc::kNoSpace, msg);
    case kCudaErrorInvalidValue:
      return error(Errc::kInvalidArgument, msg);
    default:
      return error(Errc::kInternal, msg);
  }
}

}  // namespace

bool available() {
  int count = 0;
  return detail::device_count(&count).cuda_error == 0 && count > 0;
}

Status quantize(const Params& p, const void* src, void* dst, void* stream) {
  if (Status st = validate(p); !st) return st;
  if (p.keep_outlier_channels) {
    return error(Errc::kInvalidArgument, "nf4 cuda: outlier channels are CPU only");
  }
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src) % dtype_size(p.dtype) != 0) {
    return error(Errc::kInvalidArgument, "nf4 cuda: misaligned src or dst");
  }
  Header h = plan(p);
  std::byte header[kMaxHeaderSize];
  write_header(h, header);
  dev::CodecArgs a = codec_args(h, static_cast<uint8_t>(p.dtype));
  a.src = src;
  a.encoded = static_cast<uint8_t*>(dst);
  return to_status(detail::encode(a, header, stream));
}

Status dequantize(const Header& h, const void* encoded, DType out_dtype, void* dst, void* stream) {
  if (out_dtype != DType::kF16 && out_dtype != DType::kBF16 && out_dtype != DType::kF32) {
    return error(Errc::kInvalidArgument, "nf4 cuda: decode needs a float output dtype");
  }
  if (h.params.keep_outlier_channels) {
    return error(Errc::kInvalidArgument, "nf4 cuda: outlier channels are CPU only");
  }
  if (reinterpret_cast<uintptr_t>(encoded) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(dst) % dtype_size(out_dtype) != 0) {
    return error(Errc::kInvalidArgument, "nf4 cuda: misaligned encoding or dst");
  }
  dev::CodecArgs a = codec_args(h, static_cast<uint8_t>(out_dtype));
  a.encoded = const_cast<uint8_t*>(static_cast<const uint8_t*>(encoded));  // read only
  a.dst = dst;
  return to_status(detail::decode(a, stream));
}

}  // namespace kvtier::nf4::cuda
