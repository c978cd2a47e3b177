// Portable NF4 kernels built from the shared per-element functions of nf4_device.h (the same
// ones the CUDA kernels call).  The fallback when AVX2/F16C are missing.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4::scalar {

bool absmax(const Shape& s, const void* src, float* absmax) {
  uint64_t nblocks = s.column_blocks ? (s.n / s.cols + 63) / 64 * s.cols : (s.n + 63) / 64;
  std::fill(absmax, absmax + nblocks, 0.0f);
  uint32_t bad = 0;
  for (uint64_t k = 0; k < s.n; ++k) {
    uint32_t key = dev::abs_key(src, k, s.type);
    bad |= dev::key_is_finite(key, s.type) ? 0u : 1u;
    float& a = absmax[dev::scale_index(k, s.cols, s.column_blocks)];
    a = std::max(a, dev::key_to_f32(key, s.type));
  }
  return bad == 0;
}

void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes) {
  uint64_t k = 0;
  for (; k + 1 < s.n; k += 2) {
    float inv0 = dev::inverse_scale(scales[dev::scale_index(k, s.cols, s.column_blocks)]);
    float inv1 = dev::inverse_scale(scales[dev::scale_index(k + 1, s.cols, s.column_blocks)]);
    uint32_t hi = dev::encode_value(dev::load_elem(src, k, s.type), inv0);
    uint32_t lo = dev::encode_value(dev::load_elem(src, k + 1, s.type), inv1);
    codes[k / 2] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (k < s.n) {  // odd count: the last byte's low nibble is padding, code 7
    float inv = dev::inverse_scale(scales[dev::scale_index(k, s.cols, s.column_blocks)]);
    codes[k / 2] = static_cast<uint8_t>(
        dev::encode_value(dev::load_elem(src, k, s.type), inv) << 4 | KVTIER_NF4_PAD_CODE);
  }
}

void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst) {
  if (s.column_blocks) {
    for (uint64_t k = 0; k < s.n; ++k) {
      uint32_t code = k % 2 == 0 ? codes[k / 2] >> 4 : codes[k / 2] & 15u;
      float scale = scales[dev::scale_index(k, s.cols, s.column_blocks)];
      dev::store_elem(dst, k, s.type, dev::mul_rn(dev::code_value(code), scale));
    }
    return;
  }
  // Row blocks: the 16 possible outputs of a block are converted once, then looked up.
  const size_t esize = s.type == dev::kElemF32 ? 4 : 2;
  for (uint64_t b = 0; b * 64 < s.n; ++b) {
    unsigned char lut[16][4];
    for (uint32_t c = 0; c < 16; ++c) {
      dev::store_elem(lut[c], 0, s.type, dev::mul_rn(dev::code_value(c), scales[b]));
    }
    uint64_t end = std::min<uint64_t>(s.n, 64 * b + 64);
    auto* out = static_cast<unsigned char*>(dst);
    for (uint64_t k = 64 * b; k < end; ++k) {
      uint32_t code = k % 2 == 0 ? codes[k / 2] >> 4 : codes[k / 2] & 15u;
      std::memcpy(out + k * esize, lut[code], esize);
    }
  }
}

}  // namespace kvtier::nf4::scalar
