// Host side of the NF4 CUDA path: validation, planning, and the one place where CUDA errors
// become Status.
#include "kernels/nf4_cuda.h"

#include <string>

#include "kernels/nf4_cuda_args.h"
#include "kernels/nf4_cuda_batch.h"
#include "kernels/nf4_cuda_launch.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4::cuda {
namespace {

static_assert(dev::kHeaderBytes == kMaxHeaderSize);
static_assert(sizeof(dev::BatchParams) <= 4096, "kernel parameters over the classic limit");

// cudaError_t values (driver_types.h) that mean "no usable GPU here" or "out of memory".
constexpr int kCudaErrorMemoryAllocation = 2;
constexpr int kCudaErrorNoDevice = 100;
constexpr int kCudaErrorInsufficientDriver = 35;
constexpr int kCudaErrorInvalidValue = 1;

Status to_status(const detail::LaunchResult& r) {
  if (r.cuda_error == 0) return Status::ok();
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

Status check_encode(const Params& p, const void* src, const void* dst) {
  if (Status st = validate(p); !st) return st;
  if (p.keep_outlier_channels) {
    return error(Errc::kInvalidArgument, "nf4 cuda: outlier channels are CPU only");
  }
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src) % dtype_size(p.dtype) != 0) {
    return error(Errc::kInvalidArgument, "nf4 cuda: misaligned src or dst");
  }
  return Status::ok();
}

Status check_decode(const Header& h, const void* encoded, DType out_dtype, const void* dst) {
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
  return Status::ok();
}

}  // namespace

bool available() {
  int count = 0;
  return detail::device_count(&count).cuda_error == 0 && count > 0;
}

std::vector<Status> quantize_batch(std::span<const EncodeOp> ops, void* stream) {
  std::vector<Status> out(ops.size());
  std::vector<dev::CodecArgs> args;
  std::vector<uint8_t> headers;
  std::vector<size_t> which;  // the op of each args entry
  for (size_t i = 0; i < ops.size(); ++i) {
    const EncodeOp& op = ops[i];
    out[i] = check_encode(op.p, op.src, op.dst);
    if (!out[i]) continue;
    Header h = plan(op.p);
    headers.resize(headers.size() + dev::kHeaderBytes);
    write_header(h,
                 reinterpret_cast<std::byte*>(headers.data() + headers.size() - dev::kHeaderBytes));
    dev::CodecArgs a = codec_args(h, static_cast<uint8_t>(op.p.dtype));
    a.src = op.src;
    a.encoded = static_cast<uint8_t*>(op.dst);
    args.push_back(a);
    which.push_back(i);
  }
  if (args.empty()) return out;
  std::vector<uint32_t> bad(args.size());
  const Status st = to_status(detail::encode_batch(args, headers.data(), bad.data(), stream));
  for (size_t k = 0; k < args.size(); ++k) {
    Status& o = out[which[k]];
    if (!st) {
      o = st;
    } else if (bad[k] == 1) {
      o = error(Errc::kInvalidArgument, "nf4 cuda: input contains NaN or Inf");
    } else if (bad[k] != 0) {
      o = error(Errc::kInvalidArgument, "nf4 cuda: input too large for double quant");
    }
  }
  return out;
}

Status quantize(const Params& p, const void* src, void* dst, void* stream) {
  const EncodeOp op{p, src, dst};
  return quantize_batch(std::span(&op, 1), stream).front();
}

std::vector<Status> dequantize_batch(std::span<const DecodeOp> ops, void* stream) {
  std::vector<Status> out(ops.size());
  std::vector<dev::CodecArgs> args;
  std::vector<size_t> which;
  for (size_t i = 0; i < ops.size(); ++i) {
    const DecodeOp& op = ops[i];
    out[i] = check_decode(op.h, op.encoded, op.out_dtype, op.dst);
    if (!out[i]) continue;
    dev::CodecArgs a = codec_args(op.h, static_cast<uint8_t>(op.out_dtype));
    a.encoded = const_cast<uint8_t*>(static_cast<const uint8_t*>(op.encoded));  // read only
    a.dst = op.dst;
    args.push_back(a);
    which.push_back(i);
  }
  if (args.empty()) return out;
  const Status st = to_status(detail::decode_batch(args, stream));
  if (!st)
    for (size_t i : which) out[i] = st;
  return out;
}

Status dequantize(const Header& h, const void* encoded, DType out_dtype, void* dst, void* stream) {
  const DecodeOp op{h, encoded, out_dtype, dst};
  return dequantize_batch(std::span(&op, 1), stream).front();
}

}  // namespace kvtier::nf4::cuda
