// Element types and codecs shared by the daemon, the client and the kernels.
// Numeric values are part of the wire and on-disk formats: append only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

enum class DType : uint8_t {
  kU8 = 0,
  kF16 = 1,
  kBF16 = 2,
  kF32 = 3,
  kI32 = 4,
  kI64 = 5,
};

// How a tensor's bytes are encoded in a tier.
enum class Codec : uint8_t {
  kRaw = 0,  // the bytes as given (fp16 stored as is, lossless)
  kNf4 = 1,  // 4-bit NormalFloat, kernels/nf4.h (docs/nf4.md)
};

// Which axis NF4 blocks run along, for a tensor viewed as [rows, cols] (rows = tokens,
// cols = channels, i.e. the innermost axis).
enum class Nf4Layout : uint8_t {
  kRowBlocks = 0,     // blocks of 64 along the innermost axis (bitsandbytes; values, per token)
  kColumnBlocks = 1,  // blocks of 64 along the token axis, per channel (KIVI keys)
};

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kU8:
      return 1;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kF32:
      return 4;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t);
const char* codec_name(Codec c);

}  // namespace kvtier
