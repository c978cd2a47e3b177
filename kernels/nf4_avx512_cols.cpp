// AVX-512 NF4 kernels for column blocks (per-channel keys), one 64-row group at a time: the
// group's absmax is a running max of keys kept in registers, then the group is quantized
// from L1.  See nf4_avx512.cpp for the quantizer itself.
#include <algorithm>
#include <vector>

#include "kernels/nf4_avx512.h"

namespace kvtier::nf4::avx512::detail {
namespace {

// Running max of keys of Z zmm (Z * 64 bytes) of columns from byte `off` of each row in
// [r0, r1), in registers; stored to kb + off.
template <uint8_t T, int Z>
KVTIER_AVX512 inline void strip_keys(const char* src, uint64_t row_bytes, uint64_t r0, uint64_t r1,
                                     uint64_t off, char* kb) {
  const __m512i mask = _mm512_set1_epi32(T == dev::kElemF32 ? 0x7FFFFFFF : 0x7FFF7FFF);
  __m512i acc[Z];
  for (int i = 0; i < Z; ++i) acc[i] = _mm512_setzero_si512();
  for (uint64_t r = r0; r < r1; ++r) {
    const char* p = src + r * row_bytes + off;
    for (int i = 0; i < Z; ++i) {
      acc[i] = max_keys<T>(acc[i], _mm512_and_si512(_mm512_loadu_si512(p + 64 * i), mask));
    }
  }
  for (int i = 0; i < Z; ++i) _mm512_storeu_si512(kb + off + 64 * i, acc[i]);
}

// Column blocks (cols % 16 == 0), one 64-row group [r0, r1) at a time.
template <uint8_t T>
KVTIER_AVX512 bool group_absmax(const Shape& s, const char* src, uint64_t r0, uint64_t r1,
                                uint32_t* key, float* absmax) {
  const uint64_t cols = s.cols, row_bytes = cols * kElem<T>;
  auto* kb = reinterpret_cast<char*>(key);
  uint64_t off = 0;
  for (; off + 256 <= row_bytes; off += 256) strip_keys<T, 4>(src, row_bytes, r0, r1, off, kb);
  switch ((row_bytes - off) / 64) {
    case 3:
      strip_keys<T, 3>(src, row_bytes, r0, r1, off, kb);
      break;
    case 2:
      strip_keys<T, 2>(src, row_bytes, r0, r1, off, kb);
      break;
    case 1:
      strip_keys<T, 1>(src, row_bytes, r0, r1, off, kb);
      break;
  }
  off = row_bytes / 64 * 64;
  if (off < row_bytes) {  // 16 remaining 16-bit columns
    __m256i m = _mm256_setzero_si256();
    for (uint64_t r = r0; r < r1; ++r) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + r * row_bytes + off));
      m = _mm256_max_epu16(m, _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(kb + off), m);
  }
  // Keys were accumulated in the source's element width; widen and convert 16 at a time.
  __mmask16 bad = 0;
  for (uint64_t c = 0; c < cols; c += 16) {
    __m512i k;
    if constexpr (T == dev::kElemF32) {
      k = _mm512_loadu_si512(key + c);
    } else {
      k = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + 2 * c)));
    }
    bad |= bad_keys<T>(k);
    _mm512_storeu_ps(absmax + c, keys_to_f32<T>(k));
  }
  return bad == 0;
}

template <uint8_t T, bool Clamp>
KVTIER_AVX512 void group_quantize(const Tables& q, const Shape& s, const char* src, uint64_t r0,
                                  uint64_t r1, const float* inv, uint8_t* codes) {
  const uint64_t cols = s.cols;
  for (uint64_t r = r0; r < r1; ++r) {
    const char* row = src + r * cols * kElem<T>;
    uint8_t* out = codes + r * cols / 2;
    uint64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
      __m512i v[4];
      for (int i = 0; i < 4; ++i) {
        v[i] = codes16<Clamp>(q, load16<T>(row + (c + 16 * i) * kElem<T>),
                              _mm512_loadu_ps(inv + c + 16 * i));
      }
      pack64(v, out + c / 2);
    }
    for (; c < cols; c += 16) {
      pack16(codes16<Clamp>(q, load16<T>(row + c * kElem<T>), _mm512_loadu_ps(inv + c)),
             out + c / 2);
    }
  }
}

// Per-channel absmax, or (codes != nullptr) absmax zeroed below 2^-126 and codes, one 64-row
// group at a time so the second read of the group comes from L1.
template <uint8_t T>
KVTIER_AVX512 bool cols_pass(const Shape& s, const void* src, float* absmax, uint8_t* codes) {
  const Tables q = tables();
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  std::vector<uint32_t> key(cols);
  std::vector<float> inv(cols);
  const char* base = static_cast<const char*>(src);
  bool ok = true;
  for (uint64_t r0 = 0; r0 < rows; r0 += 64) {
    const uint64_t r1 = std::min(rows, r0 + 64);
    float* a = absmax + r0 / 64 * cols;
    ok &= group_absmax<T>(s, base, r0, r1, key.data(), a);
    if (codes == nullptr) continue;
    for (uint64_t c = 0; c < cols; c += 16) {
      __m512 v = _mm512_loadu_ps(a + c);
      v = _mm512_maskz_mov_ps(
          _mm512_cmp_ps_mask(v, _mm512_set1_ps(KVTIER_NF4_MIN_SCALE), _CMP_GE_OQ), v);
      _mm512_storeu_ps(a + c, v);
      _mm512_storeu_ps(inv.data() + c, inverse16(v));
    }
    group_quantize<T, false>(q, s, base, r0, r1, inv.data(), codes);
  }
  return ok;
}

template <uint8_t T>
KVTIER_AVX512 void quantize_cols(const Shape& s, const void* src, const float* scales,
                                 uint8_t* codes) {
  const Tables q = tables();
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  std::vector<float> inv(cols);
  for (uint64_t r0 = 0; r0 < rows; r0 += 64) {
    for (uint64_t c = 0; c < cols; c += 16) {
      _mm512_storeu_ps(inv.data() + c, inverse16(_mm512_loadu_ps(scales + r0 / 64 * cols + c)));
    }
    group_quantize<T, true>(q, s, static_cast<const char*>(src), r0, std::min(rows, r0 + 64),
                            inv.data(), codes);
  }
}

template <uint8_t T>
KVTIER_AVX512 inline void store16(char* p, __m512 v) {
  if constexpr (T == dev::kElemF32) {
    _mm512_storeu_ps(p, v);
  } else if constexpr (T == dev::kElemF16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {  // bf16, round to nearest even (products are finite)
    __m512i x = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    x = _mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(x, 16)));
  }
}

// Column blocks (cols % 32 == 0): 32 codes -> two vpermps of the codebook, times the scales.
template <uint8_t T>
KVTIER_AVX512 void dequantize_cols(const Shape& s, const uint8_t* codes, const float* scales,
                                   void* dst) {
  constexpr float kBook[16] = KVTIER_NF4_CODEBOOK;
  const __m512 book = _mm512_loadu_ps(kBook);
  const __m128i nib = _mm_set1_epi8(0x0F);
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  char* out = static_cast<char*>(dst);
  for (uint64_t r = 0; r < rows; ++r) {
    const float* sc = scales + r / 64 * cols;
    for (uint64_t c = 0; c < cols; c += 32) {
      uint64_t k = r * cols + c;
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2));
      __m128i h = _mm_and_si128(_mm_srli_epi16(v, 4), nib), l = _mm_and_si128(v, nib);
      __m128i idx[2] = {_mm_unpacklo_epi8(h, l), _mm_unpackhi_epi8(h, l)};
      for (int i = 0; i < 2; ++i) {
        __m512 x = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(idx[i]), book);
        store16<T>(out + (k + 16 * i) * kElem<T>,
                   _mm512_mul_ps(x, _mm512_loadu_ps(sc + c + 16 * i)));
      }
    }
  }
}

}  // namespace

bool cols_absmax(const Shape& s, const void* src, float* absmax) {
  return by_type(s.type, [&]<uint8_t T>() { return cols_pass<T>(s, src, absmax, nullptr); });
}

bool cols_absmax_quantize(const Shape& s, const void* src, float* absmax, uint8_t* codes) {
  return by_type(s.type, [&]<uint8_t T>() { return cols_pass<T>(s, src, absmax, codes); });
}

void cols_quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes) {
  by_type(s.type, [&]<uint8_t T>() { quantize_cols<T>(s, src, scales, codes); });
}

void cols_dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst) {
  by_type(s.type, [&]<uint8_t T>() { dequantize_cols<T>(s, codes, scales, dst); });
}

}  // namespace kvtier::nf4::avx512::detail
