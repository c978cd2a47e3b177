// NF4 internals shared by the implementations and their tests; not part of the public API.
//
// Every CPU implementation splits the work the same way (nf4.cpp drives it):
//   absmax   one fp32 per block, or false if a NaN/Inf is seen;
//   scales   absmax as stored, or (double quant) as read back: the scale the codes use;
//   codes    quantize_value(x * (1/scale)) packed two per byte, earlier element high;
//   decode   code_value(nibble) * scale rounded to the output type.
// Implementations must agree byte for byte; kernels/tests check that they do.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "kvtier/status.h"
#include "kernels/nf4.h"

namespace kvtier::nf4 {

// Geometry of one call, shared by all the kernels below.
struct Shape {
  uint64_t n = 0;     // rows * cols
  uint64_t cols = 0;  // row length; scale index of (r, c) depends on it for column blocks
  bool column_blocks = false;
  uint8_t type = 0;  // dev::ElemType of the source (encode) or destination (decode)
};

Shape shape_of(const Params& p);

// plan() for exactly num_outliers outlier channels (0 unless p.keep_outlier_channels).
Header plan(const Params& p, uint32_t num_outliers);
inline uint32_t max_outliers(const Params& p) {
  if (!p.keep_outlier_channels) return 0;
  const auto cap = static_cast<uint32_t>(std::min<uint64_t>(p.cols / 16, UINT32_MAX));
  return p.max_outlier_channels > 0 ? std::min(cap, p.max_outlier_channels) : cap;
}

// Encoding with p.keep_outlier_channels (nf4_outliers.cpp): picks the channels, runs `inner`
// (an encoder for params without outliers) on a copy with them zeroed, appends them.
using EncodeFn =
    std::function<Status(const Params&, std::span<const std::byte>, std::span<std::byte>)>;
Status encode_outliers(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst,
                       const EncodeFn& inner);
// Checks the outlier channel list of a parsed encoding (kCorrupt).
Status check_outlier_cols(const Header& h, std::span<const std::byte> encoded);
// Overwrites the outlier channels of a decoded tensor with their stored values (kCorrupt on a
// non-finite one).
Status restore_outliers(const Header& h, std::span<const std::byte> encoded, DType out_dtype,
                        std::span<std::byte> dst);

// Serialises h (header_size(h.params.version) bytes, little-endian) into dst; parse_header()
// reads it back.
void write_header(const Header& h, std::byte* dst);

// Format v2 double quantization of absmax (in place: on return absmax holds the read-back
// scales).  group_max gets num_groups fp32; q7 (ceil(7 * num_blocks / 8) bytes, zeroed by the
// caller) the packed 7-bit codes.  Read-back scales never exceed their group's maximum.
void double_quantize_log(std::span<float> absmax, std::span<float> group_max, uint8_t* q7);

// Format v1 double quantization of absmax (in place: on return absmax holds the read-back scales).
// steps gets num_groups fp32, q8 num_blocks int8.  Returns false if a read-back scale
// is not finite (fp32 inputs near FLT_MAX).
bool double_quantize(std::span<float> absmax, float* offset, std::span<float> steps,
                     std::span<int8_t> q8);

// Scales from a parsed encoding; kCorrupt on a negative, NaN or infinite value.
Result<std::vector<float>> read_scales(const Header& h, std::span<const std::byte> encoded);

namespace reference {
// The spec in code: one element at a time, no tricks.  Slow.
Status encode(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst);
Status decode(std::span<const std::byte> encoded, DType out_dtype, std::span<std::byte> dst);
}  // namespace reference

// The optimised paths.  Callers guarantee sizes; src/dst may be unaligned.
namespace scalar {
bool absmax(const Shape& s, const void* src, float* absmax);
void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes);
void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst);
}  // namespace scalar

namespace avx2 {
bool supported();  // AVX2 and F16C present at run time
bool absmax(const Shape& s, const void* src, float* absmax);
void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes);
void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst);
}  // namespace avx2

namespace avx512 {
bool supported();  // AVX-512 F/BW/VL/DQ (and AVX2/F16C) present at run time
bool absmax(const Shape& s, const void* src, float* absmax);
void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes);
void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst);
// absmax() with values below 2^-126 stored as 0, then quantize() against it, in one pass.
bool absmax_quantize(const Shape& s, const void* src, float* absmax, uint8_t* codes);
}  // namespace avx512

// Encode/decode through one named path ("scalar", "avx2" or "avx512"); for tests and the benchmark.
Status encode_with(const char* path, const Params& p, std::span<const std::byte> src,
                   std::span<std::byte> dst);
Status decode_with(const char* path, std::span<const std::byte> encoded, DType out_dtype,
                   std::span<std::byte> dst);

}  // namespace kvtier::nf4
