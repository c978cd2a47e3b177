#include "index/simd_dot.h"

#include <immintrin.h>

#include <algorithm>

// GCC 12's AVX-512 intrinsics (_mm512_reduce_add_ps and others) start from undefined
// registers, which -Wmaybe-uninitialized reports at every inlined use (kernels/nf4_avx512.h).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvtier::index_detail {
namespace {

#define KVTIER_IDX_AVX2 __attribute__((target("avx2,fma")))
#define KVTIER_IDX_AVX512 __attribute__((target("avx512f,avx2,fma")))

// Four rows share each load of the query; d % 8 (16) tails are scalar.  In the u8 scans each
// group of four rows prefetches the rows kPrefetchRows ahead: inverted lists come from DRAM,
// and the hardware prefetcher alone left the scan at ~7 GB/s (70 ns per 512-byte row; 47 ns
// with this on the 2-vCPU EPYC VM).  Not in the f32 scans: the coarse centroids they read are
// usually cache-resident, where the prefetches cost 40% (and gain 20% from DRAM).
constexpr size_t kPrefetchRows = 8;

inline void prefetch_rows(const void* row, size_t bytes, const void* end) {
  const char* p = static_cast<const char*>(row);
  const char* e = std::min(p + bytes, static_cast<const char*>(end));
  for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
}

KVTIER_IDX_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

KVTIER_IDX_AVX2 void f32_avx2(const float* q, const float* x, size_t n, size_t d, float* out) {
  const size_t dv = d & ~size_t{7};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* r0 = x + i * d;
    const float* r1 = r0 + d;
    const float* r2 = r1 + d;
    const float* r3 = r2 + d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < dv; j += 8) {
      const __m256 qv = _mm256_loadu_ps(q + j);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r0 + j), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r1 + j), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r2 + j), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r3 + j), a3);
    }
    float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
    for (size_t j = dv; j < d; ++j) {
      s0 += q[j] * r0[j], s1 += q[j] * r1[j], s2 += q[j] * r2[j], s3 += q[j] * r3[j];
    }
    out[i] = s0, out[i + 1] = s1, out[i + 2] = s2, out[i + 3] = s3;
  }
  for (; i < n; ++i) {
    const float* r = x + i * d;
    __m256 a = _mm256_setzero_ps();
    for (size_t j = 0; j < dv; j += 8)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(r + j), a);
    float s = hsum256(a);
    for (size_t j = dv; j < d; ++j) s += q[j] * r[j];
    out[i] = s;
  }
}

KVTIER_IDX_AVX2 inline __m256 u8x8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

KVTIER_IDX_AVX2 void u8_avx2(const float* w, const uint8_t* c, size_t n, size_t d, float* out) {
  const size_t dv = d & ~size_t{7};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint8_t* r0 = c + i * d;
    const uint8_t* r1 = r0 + d;
    const uint8_t* r2 = r1 + d;
    const uint8_t* r3 = r2 + d;
    prefetch_rows(r0 + kPrefetchRows * d, 4 * d, c + n * d);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < dv; j += 8) {
      const __m256 wv = _mm256_loadu_ps(w + j);
      a0 = _mm256_fmadd_ps(wv, u8x8(r0 + j), a0);
      a1 = _mm256_fmadd_ps(wv, u8x8(r1 + j), a1);
      a2 = _mm256_fmadd_ps(wv, u8x8(r2 + j), a2);
      a3 = _mm256_fmadd_ps(wv, u8x8(r3 + j), a3);
    }
    float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
    for (size_t j = dv; j < d; ++j) {
      s0 += w[j] * r0[j], s1 += w[j] * r1[j], s2 += w[j] * r2[j], s3 += w[j] * r3[j];
    }
    out[i] = s0, out[i + 1] = s1, out[i + 2] = s2, out[i + 3] = s3;
  }
  for (; i < n; ++i) {
    const uint8_t* r = c + i * d;
    __m256 a = _mm256_setzero_ps();
    for (size_t j = 0; j < dv; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), u8x8(r + j), a);
    float s = hsum256(a);
    for (size_t j = dv; j < d; ++j) s += w[j] * r[j];
    out[i] = s;
  }
}

KVTIER_IDX_AVX512 void f32_avx512(const float* q, const float* x, size_t n, size_t d, float* out) {
  const size_t dv = d & ~size_t{15};
  const __mmask16 tail = static_cast<__mmask16>((1u << (d - dv)) - 1);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* r0 = x + i * d;
    const float* r1 = r0 + d;
    const float* r2 = r1 + d;
    const float* r3 = r2 + d;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < dv; j += 16) {
      const __m512 qv = _mm512_loadu_ps(q + j);
      a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(r0 + j), a0);
      a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(r1 + j), a1);
      a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(r2 + j), a2);
      a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(r3 + j), a3);
    }
    if (tail) {
      const __m512 qv = _mm512_maskz_loadu_ps(tail, q + dv);
      a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tail, r0 + dv), a0);
      a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tail, r1 + dv), a1);
      a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tail, r2 + dv), a2);
      a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tail, r3 + dv), a3);
    }
    out[i] = _mm512_reduce_add_ps(a0), out[i + 1] = _mm512_reduce_add_ps(a1);
    out[i + 2] = _mm512_reduce_add_ps(a2), out[i + 3] = _mm512_reduce_add_ps(a3);
  }
  for (; i < n; ++i) {
    const float* r = x + i * d;
    __m512 a = _mm512_setzero_ps();
    for (size_t j = 0; j < dv; j += 16)
      a = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), _mm512_loadu_ps(r + j), a);
    if (tail)
      a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + dv), _mm512_maskz_loadu_ps(tail, r + dv),
                          a);
    out[i] = _mm512_reduce_add_ps(a);
  }
}

KVTIER_IDX_AVX512 inline __m512 u8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

KVTIER_IDX_AVX512 void u8_avx512(const float* w, const uint8_t* c, size_t n, size_t d, float* out) {
  const size_t dv = d & ~size_t{15};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint8_t* r0 = c + i * d;
    const uint8_t* r1 = r0 + d;
    const uint8_t* r2 = r1 + d;
    const uint8_t* r3 = r2 + d;
    prefetch_rows(r0 + kPrefetchRows * d, 4 * d, c + n * d);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < dv; j += 16) {
      const __m512 wv = _mm512_loadu_ps(w + j);
      a0 = _mm512_fmadd_ps(wv, u8x16(r0 + j), a0);
      a1 = _mm512_fmadd_ps(wv, u8x16(r1 + j), a1);
      a2 = _mm512_fmadd_ps(wv, u8x16(r2 + j), a2);
      a3 = _mm512_fmadd_ps(wv, u8x16(r3 + j), a3);
    }
    float s0 = _mm512_reduce_add_ps(a0), s1 = _mm512_reduce_add_ps(a1);
    float s2 = _mm512_reduce_add_ps(a2), s3 = _mm512_reduce_add_ps(a3);
    for (size_t j = dv; j < d; ++j) {
      s0 += w[j] * r0[j], s1 += w[j] * r1[j], s2 += w[j] * r2[j], s3 += w[j] * r3[j];
    }
    out[i] = s0, out[i + 1] = s1, out[i + 2] = s2, out[i + 3] = s3;
  }
  for (; i < n; ++i) {
    const uint8_t* r = c + i * d;
    __m512 a = _mm512_setzero_ps();
    for (size_t j = 0; j < dv; j += 16)
      a = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), u8x16(r + j), a);
    float s = _mm512_reduce_add_ps(a);
    for (size_t j = dv; j < d; ++j) s += w[j] * r[j];
    out[i] = s;
  }
}

void f32_scalar(const float* q, const float* x, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float* r = x + i * d;
    float s[8] = {};  // eight partial sums: no loop-carried dependency on one add
    size_t j = 0;
    for (; j + 8 <= d; j += 8)
      for (size_t l = 0; l < 8; ++l) s[l] += q[j + l] * r[j + l];
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; j < d; ++j) t += q[j] * r[j];
    out[i] = t;
  }
}

void u8_scalar(const float* w, const uint8_t* codes, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* r = codes + i * d;
    float s[8] = {};
    size_t j = 0;
    for (; j + 8 <= d; j += 8)
      for (size_t l = 0; l < 8; ++l) s[l] += w[j + l] * float(r[j + l]);
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; j < d; ++j) t += w[j] * float(r[j]);
    out[i] = t;
  }
}

}  // namespace

std::vector<DotKernels> available_dot_kernels() {
  __builtin_cpu_init();
  std::vector<DotKernels> out;
  if (__builtin_cpu_supports("avx512f")) out.push_back({"avx512", f32_avx512, u8_avx512});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back({"avx2", f32_avx2, u8_avx2});
  out.push_back({"scalar", f32_scalar, u8_scalar});
  return out;
}

const DotKernels& dot_kernels() {
  static const DotKernels best = available_dot_kernels().front();
  return best;
}

}  // namespace kvtier::index_detail
