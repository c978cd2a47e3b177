// Dot-product kernels for the semantic index's search paths.  Debian's FAISS 1.7.3 is built for
// baseline x86-64 (SSE2): its inner products and its SQ8 scanner are scalar code (perf: ~1 ns
// per dimension).  These kernels pick AVX-512, AVX2+FMA or a portable loop at run time
// (no global -mavx2), like kernels/nf4_*.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvtier::index_detail {

struct DotKernels {
  const char* name;  // "avx512", "avx2" or "scalar"
  // out[i] = sum_j q[j] * x[i*d + j] for n rows of d floats.
  void (*f32)(const float* q, const float* x, size_t n, size_t d, float* out);
  // out[i] = sum_j w[j] * codes[i*d + j] for n rows of d 8-bit codes (the SQ8 scan: the
  // query is folded into w and a constant once per query, see fast_faiss.cpp).
  void (*u8)(const float* w, const uint8_t* codes, size_t n, size_t d, float* out);
};

// Every kernel set this CPU runs, best first (tests compare each with the scalar one).
std::vector<DotKernels> available_dot_kernels();
// The best of them, chosen once.
const DotKernels& dot_kernels();
inline const char* simd_level() {
  return dot_kernels().name;
}

inline void dot_rows_f32(const float* q, const float* x, size_t n, size_t d, float* out) {
  dot_kernels().f32(q, x, n, d, out);
}
inline void dot_rows_u8(const float* w, const uint8_t* codes, size_t n, size_t d, float* out) {
  dot_kernels().u8(w, codes, n, d, out);
}

}  // namespace kvtier::index_detail
