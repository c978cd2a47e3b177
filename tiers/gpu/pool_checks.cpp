#include "tiers/gpu/pool_checks.h"

#include <string>

namespace kvtier::gpu {
namespace {

bool is_float(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32;
}

std::string where(const char* op, int device) {
  return std::string(op) + " on gpu " + std::to_string(device) + ": ";
}

// rows*cols*element size, or 0 on overflow.
uint64_t tensor_bytes(uint64_t rows, uint64_t cols, DType t) {
  uint64_t n = 0;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(rows, cols, &n) || __builtin_mul_overflow(n, dtype_size(t), &bytes))
    return 0;
  return bytes;
}

}  // namespace

Status check_range(const char* op, int device, uint64_t offset, uint64_t bytes,
                   uint64_t pool_bytes) {
  if (offset > pool_bytes || bytes > pool_bytes - offset) {
    return error(Errc::kInvalidArgument, where(op, device) + std::to_string(bytes) +
                                             " bytes at offset " + std::to_string(offset) +
                                             " exceed the pool (" + std::to_string(pool_bytes) +
                                             " bytes)");
  }
  return Status::ok();
}

Status check_copy(int device, uint64_t src_offset, uint64_t src_bytes, uint64_t dst_offset,
                  uint64_t dst_bytes, uint64_t bytes, bool same_pool) {
  if (Status st = check_range("copy from", device, src_offset, bytes, src_bytes); !st) return st;
  if (Status st = check_range("copy to", device, dst_offset, bytes, dst_bytes); !st) return st;
  if (same_pool && bytes > 0 && src_offset < dst_offset + bytes && dst_offset < src_offset + bytes)
    return error(Errc::kInvalidArgument,
                 where("copy", device) + "source and destination ranges overlap");
  return Status::ok();
}

Result<nf4::Header> check_dequantize(std::span<const std::byte> encoded, DType out_dtype,
                                     uint64_t offset, int device, uint64_t pool_bytes) {
  const char* op = "nf4 dequantize";
  if (!is_float(out_dtype)) {
    return error(Errc::kInvalidArgument, where(op, device) + "output dtype must be a float type");
  }
  auto h = nf4::parse_header(encoded);
  if (!h) return error(h.status().code(), where(op, device) + h.status().message());
  if (h->params.keep_outlier_channels) {
    return error(Errc::kInvalidArgument,
                 where(op, device) + "encodings with outlier channels are decoded on the CPU only");
  }
  const uint64_t out = tensor_bytes(h->params.rows, h->params.cols, out_dtype);
  if (out == 0) return error(Errc::kInvalidArgument, where(op, device) + "tensor too large");
  if (Status st = check_range(op, device, offset, out, pool_bytes); !st) return st;
  return h;
}

Result<uint64_t> check_quantize(const nf4::Params& p, uint64_t offset, uint64_t dst_bytes,
                                int device, uint64_t pool_bytes) {
  const char* op = "nf4 quantize";
  if (Status st = nf4::validate(p); !st) {
    return error(st.code(), where(op, device) + st.message());
  }
  if (p.keep_outlier_channels) {
    return error(Errc::kInvalidArgument,
                 where(op, device) + "outlier channels are quantized on the CPU only");
  }
  const uint64_t src = tensor_bytes(p.rows, p.cols, p.dtype);
  if (src == 0) return error(Errc::kInvalidArgument, where(op, device) + "tensor too large");
  if (Status st = check_range(op, device, offset, src, pool_bytes); !st) return st;
  const uint64_t enc = nf4::encoded_size(p);
  if (dst_bytes < enc) {
    return error(Errc::kInvalidArgument, where(op, device) + "destination holds " +
                                             std::to_string(dst_bytes) + " bytes, the encoding " +
                                             std::to_string(enc));
  }
  return enc;
}

}  // namespace kvtier::gpu
