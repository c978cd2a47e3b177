// NF4 kernels for x86-64 with AVX-512 (F, BW, VL, DQ), selected at run time: every function
// carries the target attribute and runs only when supported() says so.
//
// Quantize, 16 values per zmm: t = x * (1/scale) exactly; bucket j = floor(15.5 t + 16)
// (0..31 for |t| <= 1.03) from one fma rounded down (embedded rounding, so MXCSR does not
// matter) whose low five mantissa bits are j.  Buckets are 1/15.5 wide, narrower than the
// narrowest gap between midpoints, so each holds at most one: code = base[j] + (t > mid[j]),
// two vpermt2 lookups and one exact fp32 compare (ties stay at the lower code).  No midpoint
// lies within 2e-3 of a bucket edge, so the approximate bucket cannot change a code.
// Absmax of 16 row blocks is one transposed max reduction; the encoder fuses it with the
// quantizer (encode without double quant), so a 64-row group or 16 blocks are read from
// memory once and again from L1.  Results equal the scalar path byte for byte.
#include "kernels/nf4_avx512.h"

namespace kvtier::nf4::avx512 {
namespace {

using namespace detail;

// Codes of elements [k, n) of one block (the final partial one), scalar.
inline void quantize_tail(const void* src, uint64_t k, uint64_t n, uint8_t type, float inv,
                          uint8_t* codes) {
  for (; k < n; k += 2) {
    uint32_t hi = dev::encode_value(dev::load_elem(src, k, type), inv);
    uint32_t lo =
        k + 1 < n ? dev::encode_value(dev::load_elem(src, k + 1, type), inv) : KVTIER_NF4_PAD_CODE;
    codes[k / 2] = static_cast<uint8_t>(hi << 4 | lo);
  }
}

// Absmax of row blocks [b0, b0 + 16) (those below nblocks; the others read as 0).
template <uint8_t T>
KVTIER_AVX512 inline __m512 chunk_absmax(const char* base, uint64_t n, uint64_t b0,
                                         uint64_t nblocks, __mmask16* bad) {
  __m512i v[16];
  for (uint64_t i = 0; i < 16; ++i) {
    uint64_t k = 64 * (b0 + i);
    v[i] = b0 + i < nblocks ? block_keys<T>(base + k * kElem<T>, std::min<uint64_t>(64, n - k))
                            : _mm512_setzero_si512();
  }
  __m512i keys = reduce16<T>(v);
  *bad |= bad_keys<T>(keys);
  return keys_to_f32<T>(keys);
}

inline __mmask16 chunk_mask(uint64_t b0, uint64_t nblocks) {
  return static_cast<__mmask16>((1u << std::min<uint64_t>(16, nblocks - b0)) - 1);
}

// Row blocks, sixteen at a time.  With codes == nullptr only absmax is computed (raw, as the
// other paths); otherwise absmax below 2^-126 is stored as 0 and the blocks are quantized
// against it while still in L1.  The absmax (a reduction and a division) of the next sixteen
// blocks is computed before the current ones are quantized, so its latency overlaps them.
template <uint8_t T>
KVTIER_AVX512 bool rows(const Shape& s, const void* src, float* absmax, uint8_t* codes) {
  const Tables q = tables();
  const char* base = static_cast<const char*>(src);
  const uint64_t n = s.n, nblocks = (n + 63) / 64;
  __mmask16 bad = 0;
  if (codes == nullptr) {
    for (uint64_t b0 = 0; b0 < nblocks; b0 += 16) {
      _mm512_mask_storeu_ps(absmax + b0, chunk_mask(b0, nblocks),
                            chunk_absmax<T>(base, n, b0, nblocks, &bad));
    }
    return bad == 0;
  }
  auto prepare = [&](uint64_t b0) KVTIER_AVX512 {
    __m512 a = chunk_absmax<T>(base, n, b0, nblocks, &bad);
    a = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(KVTIER_NF4_MIN_SCALE), _CMP_GE_OQ),
                            a);
    _mm512_mask_storeu_ps(absmax + b0, chunk_mask(b0, nblocks), a);
    return inverse16(a);
  };
  alignas(64) float inv[16];
  __m512 next = prepare(0);
  for (uint64_t b0 = 0; b0 < nblocks; b0 += 16) {
    _mm512_store_ps(inv, next);
    if (b0 + 16 < nblocks) next = prepare(b0 + 16);
    const uint64_t nb = std::min<uint64_t>(16, nblocks - b0);
    for (uint64_t i = 0; i < nb; ++i) {
      uint64_t k = 64 * (b0 + i);
      if (k + 64 <= n) {
        quantize_block<T, false>(q, base + k * kElem<T>, _mm512_set1_ps(inv[i]), codes + k / 2);
      } else {
        quantize_tail(src, k, n, T, inv[i], codes);
      }
    }
  }
  return bad == 0;
}

template <uint8_t T>
KVTIER_AVX512 void quantize_rows(const Shape& s, const void* src, const float* scales,
                                 uint8_t* codes) {
  const Tables q = tables();
  const char* base = static_cast<const char*>(src);
  const uint64_t full = s.n / 64;
  alignas(64) float inv[16];
  for (uint64_t b0 = 0; b0 < full; b0 += 16) {
    const uint64_t nb = std::min<uint64_t>(16, full - b0);
    _mm512_store_ps(
        inv, inverse16(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << nb) - 1), scales + b0)));
    for (uint64_t i = 0; i < nb; ++i) {
      uint64_t k = 64 * (b0 + i);
      quantize_block<T, true>(q, base + k * kElem<T>, _mm512_set1_ps(inv[i]), codes + k / 2);
    }
  }
  if (full * 64 < s.n)
    quantize_tail(src, full * 64, s.n, T, dev::inverse_scale(scales[full]), codes);
}

}  // namespace

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         avx2::supported();
}

// Column blocks need rows that start on a zmm boundary of codes; other shapes go to AVX2.
bool absmax(const Shape& s, const void* src, float* out) {
  if (s.column_blocks) {
    return s.cols % 16 == 0 ? cols_absmax(s, src, out) : avx2::absmax(s, src, out);
  }
  return by_type(s.type, [&]<uint8_t T>() { return rows<T>(s, src, out, nullptr); });
}

void quantize(const Shape& s, const void* src, const float* scales, uint8_t* codes) {
  if (s.column_blocks) {
    return s.cols % 16 == 0 ? cols_quantize(s, src, scales, codes)
                            : avx2::quantize(s, src, scales, codes);
  }
  by_type(s.type, [&]<uint8_t T>() { quantize_rows<T>(s, src, scales, codes); });
}

bool absmax_quantize(const Shape& s, const void* src, float* absmax, uint8_t* codes) {
  if (s.column_blocks && s.cols % 16 == 0) return cols_absmax_quantize(s, src, absmax, codes);
  if (s.column_blocks) {
    if (!avx2::absmax(s, src, absmax)) return false;
    uint64_t nblocks = (s.n / s.cols + 63) / 64 * s.cols;
    for (uint64_t i = 0; i < nblocks; ++i) {
      if (absmax[i] < KVTIER_NF4_MIN_SCALE) absmax[i] = 0.0f;
    }
    avx2::quantize(s, src, absmax, codes);
    return true;
  }
  return by_type(s.type, [&]<uint8_t T>() { return rows<T>(s, src, absmax, codes); });
}

void dequantize(const Shape& s, const uint8_t* codes, const float* scales, void* dst) {
  if (!s.column_blocks || s.cols % 32 != 0) return avx2::dequantize(s, codes, scales, dst);
  cols_dequantize(s, codes, scales, dst);
}

}  // namespace kvtier::nf4::avx512
