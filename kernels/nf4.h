// NF4: 4-bit NormalFloat quantization of fp16/bf16/fp32 tensors, bit-compatible with
// bitsandbytes (codebook, ties to the lower code, blocks of 64, high nibble first).
// The encoded format is specified in docs/nf4.md; this header is the whole public API.
//
// A tensor is viewed as [rows, cols] row-major: rows = tokens (all outer axes flattened),
// cols = the innermost axis.  Codes are always stored in that row-major order; the layout
// only decides which 64 values share an absmax.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier::nf4 {

inline constexpr uint32_t kMagic = 0x344E564Bu;  // "KVN4" in byte order
// Format versions (docs/nf4.md).  Encoders write kVersion unless Params::version asks for 1;
// decoders read both.  v1: 64-byte header, double quant as int8 codes around a mean.  v2:
// 32-byte header, double quant as 7-bit log-domain codes under each group's maximum.
inline constexpr uint16_t kVersion1 = 1;
inline constexpr uint16_t kVersion = 2;
inline constexpr size_t kHeaderSizeV1 = 64;
inline constexpr size_t kHeaderSize = 32;      // of kVersion
inline constexpr size_t kMaxHeaderSize = 64;   // of any version
inline constexpr uint32_t kBlockSize = 64;     // values per absmax
inline constexpr uint32_t kDqGroupSize = 256;  // absmax values per double-quant group
inline constexpr uint32_t kDqLogSteps = 16;    // v2 double quant: codes per octave
inline constexpr uint32_t kDqZeroCode = 127;   // v2 double quant: the code of a zero absmax

inline constexpr size_t header_size(uint16_t version) {
  return version == kVersion1 ? kHeaderSizeV1 : kHeaderSize;
}

struct Params {
  DType dtype = DType::kF16;  // source element type: kF16, kBF16 or kF32
  Nf4Layout layout = Nf4Layout::kRowBlocks;
  bool double_quant = false;  // absmax as 8-bit codes + one fp32 step per 256 blocks
  uint64_t rows = 0;
  uint64_t cols = 0;
  // Outlier channels (flags bit 1; docs/nf4.md): columns whose absmax over all rows exceeds
  // outlier_ratio x the median column absmax, at most cols/16 (or max_outlier_channels) of
  // them (largest first), are
  // stored exactly in the source dtype and quantized as zeros.  Either layout.  Encodings with
  // it are not readable by pre-outlier readers (kCorrupt: unknown flag), and encoded_size()
  // becomes an upper bound: the header's total_size (parse_header) is exact.
  bool keep_outlier_channels = false;
  float outlier_ratio = 4.0f;  // encoder only; not stored.  0: every non-zero column qualifies
  // Encoder only: keep at most this many outlier channels (0: the format's cap, cols / 16).
  // The bound of encoded_size() follows it.
  uint32_t max_outlier_channels = 0;
  uint16_t version = kVersion;  // format to write: kVersion, or kVersion1 for old readers
};

// Everything needed to read an encoding; offsets are bytes from its start.
struct Header {
  Params params;
  uint64_t num_blocks = 0;  // absmax values
  uint64_t num_groups = 0;  // double-quant groups (0 without double quant)
  float dq_offset = 0;      // v1: added to every dequantized absmax (0 without double quant)
  // fp32[num_blocks] absmax; with double quant fp32[num_groups]: v1 steps, v2 group maxima.
  uint64_t scales_offset = 0;
  // Double quant only: v1 int8[num_blocks] absmax codes; v2 the 7-bit codes packed LSB first,
  // ceil(7 * num_blocks / 8) bytes.
  uint64_t q8_offset = 0;
  uint64_t codes_offset = 0;  // uint8[ceil(rows*cols/2)], 16-byte aligned
  uint64_t total_size = 0;
  uint32_t num_outliers = 0;         // outlier channels stored exactly (flag bit 1)
  uint64_t outlier_cols_offset = 0;  // uint32[num_outliers], ascending column indices
  uint64_t outlier_vals_offset = 0;  // source dtype [rows, num_outliers], row-major
};

// kInvalidArgument unless dtype is a float type, the layout is known, rows and cols are
// non-zero and the encoding's size fits in 64 bits.
Status validate(const Params& p);

// Section offsets and sizes for valid params (see validate()); with keep_outlier_channels,
// for the largest possible number of outlier channels (cols / 16).
Header plan(const Params& p);

// Exact bytes of header + scales + codes (an upper bound with keep_outlier_channels); 0 when
// the params are invalid.
size_t encoded_size(const Params& p);

// Quantizes src (rows*cols elements of p.dtype, any alignment) into dst.  Fails with
// kInvalidArgument on a NaN or Inf input, a wrong src size or a short dst; dst's contents
// are then unspecified but never a valid encoding's header.
Status encode(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst);

// Validates magic, version, enums and that the sizes agree with the buffer (kCorrupt).
Result<Header> parse_header(std::span<const std::byte> encoded);

// Dequantizes into dst (rows*cols elements of out_dtype, a float type; dst.size() must be at
// least that).  Values that do not fit out_dtype become infinity.  kCorrupt on a bad header
// or a negative/non-finite scale.
Status decode(std::span<const std::byte> encoded, DType out_dtype, std::span<std::byte> dst);

// Which CPU implementation encode/decode use on this machine: "avx512", "avx2+f16c" or
// "scalar".
const char* active_cpu_path();

}  // namespace kvtier::nf4
