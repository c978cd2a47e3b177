// Building blocks of the AVX-512 NF4 kernels (nf4_avx512.cpp: row blocks and dispatch;
// nf4_avx512_cols.cpp: column blocks).  Internal: include only from those files, which compile
// every function here with the AVX-512 target attribute and call them only when
// avx512::supported() says so.
#pragma once
#include <immintrin.h>

// GCC 12's AVX-512 headers seed masked intrinsics with _mm512_undefined_*(), which its
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <array>
#include <vector>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

#define KVTIER_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

namespace kvtier::nf4::avx512::detail {

constexpr double kSlope = 15.5;
constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: floor(v) + kMagic has v in its low bits

struct Buckets {
  std::array<float, 32> mid{};
  std::array<int32_t, 32> base{};
};

constexpr Buckets make_buckets() {
  constexpr float kMid[15] = KVTIER_NF4_MIDPOINTS;
  Buckets b;
  for (int j = 0; j < 32; ++j) {
    double lo = (j - 16) / kSlope, hi = (j - 15) / kSlope;
    b.mid[j] = __builtin_inff();
    for (float m : kMid) {
      if (m < lo) ++b.base[j];
      if (m >= lo && m < hi) b.mid[j] = m;
      // Guard band: the fma's rounding must not move a midpoint across an edge.
      if ((m - lo < 2e-3 && m - lo > -2e-3) || (hi - m < 2e-3 && hi - m > -2e-3)) throw "edge";
    }
  }
  return b;
}
constexpr Buckets kBuckets = make_buckets();

struct Tables {
  __m512 mid_lo, mid_hi, slope, magic;
  __m512i base_lo, base_hi, one;
};

KVTIER_AVX512 inline Tables tables() {
  return {_mm512_loadu_ps(kBuckets.mid.data()),
          _mm512_loadu_ps(kBuckets.mid.data() + 16),
          _mm512_set1_ps(static_cast<float>(kSlope)),
          _mm512_set1_ps(kMagic + 16.0f),
          _mm512_loadu_si512(kBuckets.base.data()),
          _mm512_loadu_si512(kBuckets.base.data() + 16),
          _mm512_set1_epi32(1)};
}

// Sixteen codes (int32 lanes, element order) of x * inv.  Clamp: |t| may exceed 1.03 (scales
// read back from double quant); without it, scales are the exact absmax.
template <bool Clamp>
KVTIER_AVX512 inline __m512i codes16(const Tables& q, __m512 x, __m512 inv) {
  __m512 t = _mm512_mul_ps(x, inv);
  __m512 u = _mm512_fmadd_round_ps(t, q.slope, q.magic, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  if constexpr (Clamp) {
    u = _mm512_min_ps(_mm512_max_ps(u, _mm512_set1_ps(kMagic)), _mm512_set1_ps(kMagic + 31.0f));
  }
  __m512i j = _mm512_castps_si512(u);
  __m512 mid = _mm512_permutex2var_ps(q.mid_lo, j, q.mid_hi);
  __m512i base = _mm512_permutex2var_epi32(q.base_lo, j, q.base_hi);
  return _mm512_mask_add_epi32(base, _mm512_cmp_ps_mask(t, mid, _CMP_GT_OQ), base, q.one);
}

template <uint8_t T>
constexpr size_t kElem = T == dev::kElemF32 ? 4 : 2;

template <uint8_t T>
KVTIER_AVX512 inline __m512 load16(const char* p) {
  if constexpr (T == dev::kElemF32) {
    return _mm512_loadu_ps(p);
  } else {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (T == dev::kElemF16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// Packs 64 codes (c[0..3], element order) into 32 bytes, earlier element in the high nibble.
KVTIER_AVX512 inline void pack64(const __m512i c[4], uint8_t* out) {
  __m512i p = _mm512_packus_epi16(_mm512_packs_epi32(c[0], c[1]), _mm512_packs_epi32(c[2], c[3]));
  // Dword 4L+j now holds elements 16j+4L..+3 of the block as two bytes: put it at 4j+L.
  __m512i w = _mm512_maddubs_epi16(p, _mm512_set1_epi16(0x0110));
  w = _mm512_permutexvar_epi32(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), w);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi16_epi8(w));
}

// Packs 16 codes into 8 bytes.
KVTIER_AVX512 inline void pack16(__m512i c, uint8_t* out) {
  __m128i b = _mm512_cvtepi32_epi8(c);
  __m128i w = _mm_maddubs_epi16(b, _mm_set1_epi16(0x0110));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w, w));
}

// Keys (|x| bits, NaN/Inf above finite) of up to 64 elements as 16 or 32 lanes whose max is
// the block's max; elements past `count` read as 0.
template <uint8_t T>
KVTIER_AVX512 inline __m512i block_keys(const char* p, uint64_t count) {
  if constexpr (T == dev::kElemF32) {
    const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i m = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
      __mmask16 k = count >= 16u * (i + 1) ? 0xFFFF
                    : count > 16u * i      ? static_cast<__mmask16>((1u << (count - 16 * i)) - 1)
                                           : 0;
      m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_maskz_loadu_epi32(k, p + 64 * i), mask));
    }
    return m;
  } else {
    const __m512i mask = _mm512_set1_epi16(0x7FFF);
    __mmask32 k0 = count >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1ull << count) - 1);
    __mmask32 k1 = count >= 64  ? ~__mmask32{0}
                   : count > 32 ? static_cast<__mmask32>((1ull << (count - 32)) - 1)
                                : 0;
    __m512i a = _mm512_and_si512(_mm512_maskz_loadu_epi16(k0, p), mask);
    __m512i b = _mm512_and_si512(_mm512_maskz_loadu_epi16(k1, p + 64), mask);
    return _mm512_max_epu16(a, b);
  }
}

template <uint8_t T>
KVTIER_AVX512 inline __m512i max_keys(__m512i a, __m512i b) {
  return T == dev::kElemF32 ? _mm512_max_epu32(a, b) : _mm512_max_epu16(a, b);
}

// Sixteen block maxima (lane i: block i) of v[0..15], each a vector of keys of one block.
template <uint8_t T>
KVTIER_AVX512 inline __m512i reduce16(__m512i v[16]) {
  for (int i = 0; i < 8; ++i) {  // 256-bit halves: low half block i, high half block i + 8
    v[i] = max_keys<T>(_mm512_shuffle_i64x2(v[i], v[i + 8], 0x44),
                       _mm512_shuffle_i64x2(v[i], v[i + 8], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes: blocks i, i + 8, i + 4, i + 12
    v[i] = max_keys<T>(_mm512_shuffle_i64x2(v[i], v[i + 4], 0x88),
                       _mm512_shuffle_i64x2(v[i], v[i + 4], 0xDD));
  }
  for (int i = 0; i < 2; ++i) {  // qwords: lane L holds blocks of v[i] and v[i + 2]
    v[i] =
        max_keys<T>(_mm512_unpacklo_epi64(v[i], v[i + 2]), _mm512_unpackhi_epi64(v[i], v[i + 2]));
    v[i] = max_keys<T>(v[i], _mm512_shuffle_epi32(v[i], _MM_PERM_CDAB));
  }
  __m512i u = _mm512_mask_blend_epi32(0xAAAA, v[0], v[1]);
  if constexpr (T != dev::kElemF32) {
    u = _mm512_and_si512(_mm512_max_epu16(u, _mm512_srli_epi32(u, 16)), _mm512_set1_epi32(0xFFFF));
  }
  // Lanes now hold blocks 0-3, 8-11, 4-7, 12-15.
  return _mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(3, 1, 2, 0));
}

template <uint8_t T>
KVTIER_AVX512 inline __m512 keys_to_f32(__m512i k) {
  if constexpr (T == dev::kElemF32) return _mm512_castsi512_ps(k);
  if constexpr (T == dev::kElemF16) return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(k));
  return _mm512_castsi512_ps(_mm512_slli_epi32(k, 16));
}

template <uint8_t T>
KVTIER_AVX512 inline __mmask16 bad_keys(__m512i k) {
  return _mm512_cmpge_epu32_mask(k, _mm512_set1_epi32(T == dev::kElemF32   ? 0x7F800000
                                                      : T == dev::kElemF16 ? 0x7C00
                                                                           : 0x7F80));
}

// 1/scale where scale >= 2^-126, else 0 (dev::inverse_scale, sixteen at a time).
KVTIER_AVX512 inline __m512 inverse16(__m512 sc) {
  __mmask16 ok = _mm512_cmp_ps_mask(sc, _mm512_set1_ps(KVTIER_NF4_MIN_SCALE), _CMP_GE_OQ);
  return _mm512_maskz_div_ps(ok, _mm512_set1_ps(1.0f), sc);
}

template <uint8_t T, bool Clamp>
KVTIER_AVX512 inline void quantize_block(const Tables& q, const char* p, __m512 inv, uint8_t* out) {
  __m512i c[4];
  for (int i = 0; i < 4; ++i) c[i] = codes16<Clamp>(q, load16<T>(p + 16 * kElem<T> * i), inv);
  pack64(c, out);
}

template <typename F>
auto by_type(uint8_t type, F&& f) {
  switch (type) {
    case dev::kElemF16:
      return f.template operator()<dev::kElemF16>();
    case dev::kElemBF16:
      return f.template operator()<dev::kElemBF16>();
    default:
      return f.template operator()<dev::kElemF32>();
  }
}

// Column blocks (cols % 16 == 0; dequantize: cols % 32 == 0), nf4_avx512_cols.cpp.
bool cols_absmax(const Shape& s, const void* src, float* absmax);
bool cols_absmax_quantize(const Shape& s, const void* src, float* absmax, uint8_t* codes);
void cols_quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes);
void cols_dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst);

}  // namespace kvtier::nf4::avx512::detail
