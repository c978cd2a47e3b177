// NF4 kernels for x86-64 with AVX2 and F16C, selected at run time (no global -mavx2: every
// function here carries the target attribute and is only called when supported() says so).
//
// Quantize: code = number of midpoints below t = x * (1/scale).  t picks one of eight buckets
// of width 1/4 ([-1,1] plus clamping); each bucket holds at most three midpoints, looked up
// with vpermps, and a base count.  No midpoint lies within 1e-3 of a bucket edge, so the
// rounding in computing the bucket cannot change a code; the comparisons themselves are the
// exact fp32 t > midpoint, which keeps ties at the lower code.
// Dequantize: per 64-value block, the 16 products code*scale are rounded to the output type
// once and the codes index them with pshufb.  Results equal the scalar path byte for byte.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

#define KVTIER_AVX2 __attribute__((target("avx2,f16c")))

namespace kvtier::nf4::avx2 {
namespace {

constexpr float kInf = __builtin_inff();

struct QuantTables {
  __m256 four, clamp_hi, zero, m1, m2, m3;
  __m256i base;
};

KVTIER_AVX2 QuantTables quant_tables() {
  QuantTables q;
  q.four = _mm256_set1_ps(4.0f);
  q.clamp_hi = _mm256_set1_ps(7.5f);
  q.zero = _mm256_setzero_ps();
  // Bucket j covers t in [(j-4)/4, (j-3)/4); unused slots are +inf (never exceeded).
  q.m1 = _mm256_setr_ps(-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
                        -0.23460740596055984f, 0.03979014977812767f, 0.2920137718319893f,
                        0.5016634166240692f, 0.8614784181118011f);
  q.m2 = _mm256_setr_ps(kInf, kInf, -0.33967943489551544f, -0.13791173323988914f,
                        0.1202552504837513f, 0.3893125355243683f, 0.6427869200706482f, kInf);
  q.m3 = _mm256_setr_ps(kInf, kInf, kInf, -0.045525018125772476f, 0.2035212516784668f, kInf, kInf,
                        kInf);
  q.base = _mm256_setr_epi32(0, 1, 2, 4, 7, 10, 12, 14);
  return q;
}

// Eight codes (int32 lanes, element order) for x * inv.
KVTIER_AVX2 inline __m256i codes8(const QuantTables& q, __m256 x, __m256 inv) {
  __m256 t = _mm256_mul_ps(x, inv);
  __m256 u = _mm256_add_ps(_mm256_mul_ps(t, q.four), q.four);
  __m256i j = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(u, q.clamp_hi), q.zero));
  __m256i code = _mm256_permutevar8x32_epi32(q.base, j);
  __m256 g1 = _mm256_cmp_ps(t, _mm256_permutevar8x32_ps(q.m1, j), _CMP_GT_OQ);
  __m256 g2 = _mm256_cmp_ps(t, _mm256_permutevar8x32_ps(q.m2, j), _CMP_GT_OQ);
  __m256 g3 = _mm256_cmp_ps(t, _mm256_permutevar8x32_ps(q.m3, j), _CMP_GT_OQ);
  code = _mm256_sub_epi32(code, _mm256_castps_si256(g1));  // true lanes are -1
  code = _mm256_sub_epi32(code, _mm256_castps_si256(g2));
  return _mm256_sub_epi32(code, _mm256_castps_si256(g3));
}

template <uint8_t T>
KVTIER_AVX2 inline __m256 load8(const void* src, uint64_t k) {
  const char* p = static_cast<const char*>(src);
  if constexpr (T == dev::kElemF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p + 4 * k));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k));
    if constexpr (T == dev::kElemF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// Packs 64 codes (c[0..7], element order) into 32 bytes, earlier element in the high nibble.
KVTIER_AVX2 inline void pack64(const __m256i c[8], uint8_t* out) {
  const __m256i w = _mm256_set1_epi16(0x0110);  // bytes 16, 1: e0 * 16 + e1
  __m256i a = _mm256_packus_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
  __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(c[4], c[5]), _mm256_packs_epi32(c[6], c[7]));
  // Pairs of codes sit next to each other, so combine them before fixing the order.
  __m256i p = _mm256_packus_epi16(_mm256_maddubs_epi16(a, w), _mm256_maddubs_epi16(b, w));
  // 16-bit unit i of lane 0 holds codes 0-3 of c[i], of lane 1 codes 4-7.
  __m128i lo = _mm256_castsi256_si128(p), hi = _mm256_extracti128_si256(p, 1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi16(lo, hi));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_unpackhi_epi16(lo, hi));
}

// Packs 8 codes into 4 bytes.
KVTIER_AVX2 inline void pack8(__m256i c, uint8_t* out) {
  __m128i s = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  __m128i b = _mm_packus_epi16(s, s);
  __m128i p = _mm_maddubs_epi16(b, _mm_set1_epi16(0x0110));
  uint32_t v = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_packus_epi16(p, p)));
  __builtin_memcpy(out, &v, 4);
}

// Max of |x| keys over 64 elements at k (integer domain: NaN/Inf compare above finite).
template <uint8_t T>
KVTIER_AVX2 inline uint32_t block_key(const void* src, uint64_t k) {
  const char* p = static_cast<const char*>(src) + k * (T == dev::kElemF32 ? 4 : 2);
  if constexpr (T == dev::kElemF32) {
    const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i m = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * i));
      m = _mm256_max_epu32(m, _mm256_and_si256(v, mask));
    }
    __m128i x = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    x = _mm_max_epu32(x, _mm_shuffle_epi32(x, 0x4E));
    x = _mm_max_epu32(x, _mm_shuffle_epi32(x, 0xB1));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(x));
  } else {
    const __m256i mask = _mm256_set1_epi16(0x7FFF);
    __m256i m = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * i));
      m = _mm256_max_epu16(m, _mm256_and_si256(v, mask));
    }
    __m128i x = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    x = _mm_minpos_epu16(_mm_xor_si128(x, _mm_set1_epi16(-1)));  // max = ~min(~x)
    return ~static_cast<uint32_t>(_mm_cvtsi128_si32(x)) & 0xFFFFu;
  }
}

template <uint8_t T>
KVTIER_AVX2 bool absmax_rows(const Shape& s, const void* src, float* absmax) {
  uint64_t full = s.n / 64;
  uint32_t worst = 0;
  for (uint64_t b = 0; b < full; ++b) {
    uint32_t key = block_key<T>(src, 64 * b);
    worst = key > worst ? key : worst;
    absmax[b] = dev::key_to_f32(key, T);
  }
  if (full * 64 < s.n) {
    uint32_t key = 0;
    for (uint64_t k = full * 64; k < s.n; ++k) key = std::max(key, dev::abs_key(src, k, T));
    worst = key > worst ? key : worst;
    absmax[full] = dev::key_to_f32(key, T);
  }
  return dev::key_is_finite(worst, T);
}

// Column blocks with cols % 8 == 0: a running per-column max of keys over each 64-row group.
template <uint8_t T>
KVTIER_AVX2 bool absmax_cols(const Shape& s, const void* src, float* absmax) {
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  std::vector<uint32_t> key(cols);
  const __m256i mask = _mm256_set1_epi32(T == dev::kElemF32 ? 0x7FFFFFFF : 0x7FFF);
  __m256i worst = _mm256_setzero_si256();
  for (uint64_t r0 = 0; r0 < rows; r0 += 64) {
    std::fill(key.begin(), key.end(), 0u);
    for (uint64_t r = r0; r < std::min(rows, r0 + 64); ++r) {
      const char* row = static_cast<const char*>(src) + r * cols * (T == dev::kElemF32 ? 4 : 2);
      for (uint64_t c = 0; c < cols; c += 8) {
        __m256i v;
        if constexpr (T == dev::kElemF32) {
          v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 4 * c));
        } else {
          v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
        }
        auto* kp = reinterpret_cast<__m256i*>(key.data() + c);
        _mm256_storeu_si256(kp,
                            _mm256_max_epu32(_mm256_loadu_si256(kp), _mm256_and_si256(v, mask)));
      }
    }
    for (uint64_t c = 0; c < cols; c += 8) {
      worst =
          _mm256_max_epu32(worst, _mm256_loadu_si256(reinterpret_cast<__m256i*>(key.data() + c)));
    }
    for (uint64_t c = 0; c < cols; ++c) absmax[r0 / 64 * cols + c] = dev::key_to_f32(key[c], T);
  }
  alignas(32) uint32_t w[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(w), worst);
  uint32_t m = 0;
  for (uint32_t x : w) m = std::max(m, x);
  return dev::key_is_finite(m, T);
}

// out[i] = dev::inverse_scale(scales[i]) for i < n, eight at a time.
KVTIER_AVX2 void inverse_scales(const float* scales, uint64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), min_scale = _mm256_set1_ps(KVTIER_NF4_MIN_SCALE);
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 sc = _mm256_loadu_ps(scales + i);
    __m256 ok = _mm256_cmp_ps(sc, min_scale, _CMP_GE_OQ);
    _mm256_storeu_ps(out + i, _mm256_and_ps(_mm256_div_ps(one, sc), ok));
  }
  for (; i < n; ++i) out[i] = dev::inverse_scale(scales[i]);
}

template <uint8_t T>
KVTIER_AVX2 void quantize_rows(const Shape& s, const void* src, const float* scales,
                               uint8_t* codes) {
  const QuantTables q = quant_tables();
  uint64_t full = s.n / 64;
  // 1/scale for all blocks up front: a divide per block would sit on each block's
  // critical path.
  std::vector<float> invs(full + 8);
  inverse_scales(scales, full, invs.data());
  for (uint64_t b = 0; b < full; ++b) {
    __m256 inv = _mm256_broadcast_ss(&invs[b]);
    __m256i c[8];
    for (int i = 0; i < 8; ++i) c[i] = codes8(q, load8<T>(src, 64 * b + 8 * i), inv);
    pack64(c, codes + 32 * b);
  }
  if (full * 64 < s.n) {  // final partial block
    float inv = dev::inverse_scale(scales[full]);
    for (uint64_t k = full * 64; k < s.n; k += 2) {
      uint32_t hi = dev::encode_value(dev::load_elem(src, k, T), inv);
      uint32_t lo =
          k + 1 < s.n ? dev::encode_value(dev::load_elem(src, k + 1, T), inv) : KVTIER_NF4_PAD_CODE;
      codes[k / 2] = static_cast<uint8_t>(hi << 4 | lo);
    }
  }
}

template <uint8_t T>
KVTIER_AVX2 void quantize_cols(const Shape& s, const void* src, const float* scales,
                               uint8_t* codes) {
  const QuantTables q = quant_tables();
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  std::vector<float> inv(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    if (r % 64 == 0) {
      inverse_scales(scales + r / 64 * cols, cols, inv.data());
    }
    uint64_t k = r * cols, c = 0;
    for (; c + 64 <= cols; c += 64) {
      __m256i v[8];
      for (int i = 0; i < 8; ++i) {
        v[i] = codes8(q, load8<T>(src, k + c + 8 * i), _mm256_loadu_ps(inv.data() + c + 8 * i));
      }
      pack64(v, codes + (k + c) / 2);
    }
    for (; c < cols; c += 8) {
      pack8(codes8(q, load8<T>(src, k + c), _mm256_loadu_ps(inv.data() + c)), codes + (k + c) / 2);
    }
  }
}

// fp32 -> bf16 bits (round to nearest even; inputs finite) in the low half of each lane.
KVTIER_AVX2 inline __m256i bf16_bits(__m256 p) {
  __m256i x = _mm256_castps_si256(p);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  x = _mm256_add_epi32(x, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  return _mm256_srli_epi32(x, 16);
}

// The 16 products code * scale, rounded to T, as a low-byte and a high-byte pshufb table
// (broadcast to both lanes).  T is kElemF16 or kElemBF16.
template <uint8_t T>
KVTIER_AVX2 inline void lut16(float scale, __m256i* lo, __m256i* hi) {
  const __m256 s = _mm256_set1_ps(scale);
  __m256 p0 = _mm256_mul_ps(
      _mm256_setr_ps(-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f),
      s);
  __m256 p1 =
      _mm256_mul_ps(_mm256_setr_ps(0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                   0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                   0.7229568362236023f, 1.0f),
                    s);
  __m128i h0, h1;
  if constexpr (T == dev::kElemF16) {
    h0 = _mm256_cvtps_ph(p0, _MM_FROUND_TO_NEAREST_INT);
    h1 = _mm256_cvtps_ph(p1, _MM_FROUND_TO_NEAREST_INT);
  } else {  // bf16, round to nearest even (products are finite)
    __m256i h = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_bits(p0), bf16_bits(p1)), 0xD8);
    h0 = _mm256_castsi256_si128(h);
    h1 = _mm256_extracti128_si256(h, 1);
  }
  const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  h0 = _mm_shuffle_epi8(h0, split);
  h1 = _mm_shuffle_epi8(h1, split);
  *lo = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(h0, h1));
  *hi = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(h0, h1));
}

// 64 codes (32 bytes) -> 64 16-bit values through the tables.
KVTIER_AVX2 inline void expand64(const uint8_t* in, __m256i lo, __m256i hi, char* out) {
  const __m256i nib = _mm256_set1_epi8(0x0F);
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in));
  __m256i h = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
  __m256i l = _mm256_and_si256(v, nib);
  __m256i idx[2] = {_mm256_unpacklo_epi8(h, l), _mm256_unpackhi_epi8(h, l)};
  for (int i = 0; i < 2; ++i) {
    // idx[0]: lane 0 codes 0-15, lane 1 codes 32-47; idx[1]: 16-31 and 48-63.
    __m256i bl = _mm256_shuffle_epi8(lo, idx[i]), bh = _mm256_shuffle_epi8(hi, idx[i]);
    __m256i a = _mm256_unpacklo_epi8(bl, bh), b = _mm256_unpackhi_epi8(bl, bh);
    auto* o = reinterpret_cast<__m256i*>(out);
    _mm256_storeu_si256(o + i, _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256(o + 2 + i, _mm256_permute2x128_si256(a, b, 0x31));
  }
}

// 8 codes from 4 bytes as int32 lanes in element order.
KVTIER_AVX2 inline __m256i unpack8(const uint8_t* in) {
  uint32_t w;
  __builtin_memcpy(&w, in, 4);
  __m256i v = _mm256_set1_epi32(static_cast<int>(w));
  v = _mm256_srlv_epi32(v, _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24));
  return _mm256_and_si256(v, _mm256_set1_epi32(15));
}

// code_value() for 8 codes: two vpermps and a blend on bit 3.
KVTIER_AVX2 inline __m256 lookup8(__m256 cb_lo, __m256 cb_hi, __m256i code) {
  __m256 a = _mm256_permutevar8x32_ps(cb_lo, code), b = _mm256_permutevar8x32_ps(cb_hi, code);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(code, 28)));
}

template <uint8_t T>
KVTIER_AVX2 inline void store8(void* dst, uint64_t k, __m256 v) {
  char* p = static_cast<char*>(dst);
  if constexpr (T == dev::kElemF32) {
    _mm256_storeu_ps(reinterpret_cast<float*>(p + 4 * k), v);
  } else if constexpr (T == dev::kElemF16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2 * k),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    __m256i x = bf16_bits(v);
    __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2 * k), h);
  }
}

KVTIER_AVX2 inline __m256 codebook_lo() {
  return _mm256_setr_ps(-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f);
}
KVTIER_AVX2 inline __m256 codebook_hi() {
  return _mm256_setr_ps(0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                        0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                        0.7229568362236023f, 1.0f);
}

template <uint8_t T>
KVTIER_AVX2 void dequantize_rows(const Shape& s, const uint8_t* codes, const float* scales,
                                 void* dst) {
  uint64_t full = s.n / 64;
  if constexpr (T == dev::kElemF32) {
    const __m256 lo = codebook_lo(), hi = codebook_hi();
    for (uint64_t b = 0; b < full; ++b) {
      __m256 sc = _mm256_set1_ps(scales[b]);
      for (int i = 0; i < 8; ++i) {
        __m256 v = _mm256_mul_ps(lookup8(lo, hi, unpack8(codes + 32 * b + 4 * i)), sc);
        store8<T>(dst, 64 * b + 8 * i, v);
      }
    }
  } else {
    for (uint64_t b = 0; b < full; ++b) {
      __m256i lo, hi;
      lut16<T>(scales[b], &lo, &hi);
      expand64(codes + 32 * b, lo, hi, static_cast<char*>(dst) + 128 * b);
    }
  }
  for (uint64_t k = full * 64; k < s.n; ++k) {
    uint32_t code = k % 2 == 0 ? codes[k / 2] >> 4 : codes[k / 2] & 15u;
    dev::store_elem(dst, k, T, dev::mul_rn(dev::code_value(code), scales[full]));
  }
}

template <uint8_t T>
KVTIER_AVX2 void dequantize_cols(const Shape& s, const uint8_t* codes, const float* scales,
                                 void* dst) {
  const __m256 lo = codebook_lo(), hi = codebook_hi();
  const uint64_t rows = s.n / s.cols, cols = s.cols;
  for (uint64_t r = 0; r < rows; ++r) {
    const float* sc = scales + r / 64 * cols;
    for (uint64_t c = 0; c < cols; c += 8) {
      uint64_t k = r * cols + c;
      __m256 v = _mm256_mul_ps(lookup8(lo, hi, unpack8(codes + k / 2)), _mm256_loadu_ps(sc + c));
      store8<T>(dst, k, v);
    }
  }
}

// Calls f.template operator()<T>() for the runtime element type.
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

}  // namespace

bool supported() {
  // Once: CPUID traps to the hypervisor in a VM (microseconds), and decode_with() asks each call.
  static const bool yes = [] {
    __builtin_cpu_init();
    // F16C from CPUID leaf 1 (ECX bit 29): clang before 15 does not accept "f16c" in
    // __builtin_cpu_supports.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    return __builtin_cpu_supports("avx2") && f16c;
  }();
  return yes;
}

// Column blocks need every row to start on a byte and an 8-column boundary; other shapes
// (cols % 8 != 0, rare for KV) take the scalar path.
bool absmax(const Shape& s, const void* src, float* out) {
  if (s.column_blocks && s.cols % 8 != 0) return scalar::absmax(s, src, out);
  return by_type(s.type, [&]<uint8_t T>() {
    return s.column_blocks ? absmax_cols<T>(s, src, out) : absmax_rows<T>(s, src, out);
  });
}

void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes) {
  if (s.column_blocks && s.cols % 8 != 0) return scalar::quantize(s, src, scales, codes);
  by_type(s.type, [&]<uint8_t T>() {
    s.column_blocks ? quantize_cols<T>(s, src, scales, codes)
                    : quantize_rows<T>(s, src, scales, codes);
  });
}

void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst) {
  if (s.column_blocks && s.cols % 8 != 0) return scalar::dequantize(s, codes, scales, dst);
  by_type(s.type, [&]<uint8_t T>() {
    s.column_blocks ? dequantize_cols<T>(s, codes, scales, dst)
                    : dequantize_rows<T>(s, codes, scales, dst);
  });
}

}  // namespace kvtier::nf4::avx2
