// Bodies of the NF4 CUDA kernels, one function per kernel, each taking the thread's
// (blockIdx.x, blockDim.x, threadIdx.x).  nf4_cuda.cu wraps each in a __global__ function;
// kernels/tests/nf4_cuda_grid_test.cpp runs the same bodies over the whole grid on the CPU.
// Compiles as C++17 (nvcc) and C++20 (g++).
#pragma once

#include <cstdint>

#include "kernels/nf4_device.h"

namespace kvtier::nf4::dev {

inline constexpr uint32_t kThreadsPerBlock = 256;

// Everything a kernel needs; pointers are device-visible (device or registered host memory).
struct CodecArgs {
  const void* src = nullptr;   // encode: rows*cols elements of `type`
  void* dst = nullptr;         // decode: rows*cols elements of `type`
  uint8_t* encoded = nullptr;  // the encoding (header + sections); const when decoding
  uint64_t n = 0, cols = 0;
  uint64_t num_blocks = 0, num_groups = 0;
  uint64_t scales_offset = 0, q8_offset = 0, codes_offset = 0;
  uint64_t header_size = 0;  // bytes before scales_offset
  uint8_t type = 0;          // ElemType of src (encode) or dst (decode)
  bool column_blocks = false;
  bool double_quant = false;
  bool log_dq = false;  // format v2: double quant as 7-bit log-domain codes (dq7_thread)
  // Encode scratch (device memory): absmax/scales, per-group sums, offset, bad-input flag.
  float* scales = nullptr;
  double* group_sums = nullptr;
  float* offset = nullptr;
  uint32_t* bad_input = nullptr;
};

KVTIER_HD uint64_t thread_index(uint32_t block, uint32_t dim, uint32_t thread) {
  return static_cast<uint64_t>(block) * dim + thread;
}

KVTIER_HD uint64_t grid_blocks(uint64_t work) {
  return (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
}

// Number of elements covered by scale block b and the step between them.
KVTIER_HD void block_extent(const CodecArgs& a, uint64_t b, uint64_t* first, uint64_t* count,
                            uint64_t* stride) {
  if (!a.column_blocks) {
    *first = b * 64u;
    *count = a.n - *first < 64u ? a.n - *first : 64u;
    *stride = 1;
    return;
  }
  uint64_t rows = a.n / a.cols, g = b / a.cols, c = b - g * a.cols;
  *first = g * 64u * a.cols + c;
  *count = rows - g * 64u < 64u ? rows - g * 64u : 64u;
  *stride = a.cols;
}

// One thread per scale block: absmax, flushed to 0 below 2^-126; NaN/Inf sets *bad_input.
KVTIER_HD void absmax_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t b = thread_index(block, dim, thread);
  if (b >= a.num_blocks) return;
  uint64_t first, count, stride;
  block_extent(a, b, &first, &count, &stride);
  uint32_t key = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t k = abs_key(a.src, first + i * stride, a.type);
    key = k > key ? k : key;
  }
  if (!key_is_finite(key, a.type)) {
    *a.bad_input = 1;  // benign race: every writer stores 1
    return;
  }
  float m = key_to_f32(key, a.type);
  a.scales[b] = m < KVTIER_NF4_MIN_SCALE ? 0.0f : m;
}

// Double quant, step 1: one thread per group, its absmax sum in double in index order.
KVTIER_HD void dq_sum_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t g = thread_index(block, dim, thread);
  if (g >= a.num_groups) return;
  double sum = 0;
  uint64_t end = (g + 1) * 256u < a.num_blocks ? (g + 1) * 256u : a.num_blocks;
  for (uint64_t i = g * 256u; i < end; ++i) sum += a.scales[i];
  a.group_sums[g] = sum;
}

// Double quant, step 2: a single thread adds the group sums in order; the mean is the offset.
KVTIER_HD void dq_offset_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  if (thread_index(block, dim, thread) != 0) return;
  double total = 0;
  for (uint64_t g = 0; g < a.num_groups; ++g) total += a.group_sums[g];
  float off = static_cast<float>(total / static_cast<double>(a.num_blocks));
  *a.offset = off;
  store_raw<float>(a.encoded + 40, 0, off);  // header field dq_offset
}

// Double quant, step 3: one thread per group writes its step and int8 codes, and replaces
// the absmax values with the read-back scales the codes must use.
KVTIER_HD void dq_quant_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t g = thread_index(block, dim, thread);
  if (g >= a.num_groups) return;
  float off = *a.offset;
  uint64_t end = (g + 1) * 256u < a.num_blocks ? (g + 1) * 256u : a.num_blocks;
  float amax = 0;
  for (uint64_t i = g * 256u; i < end; ++i) {
    float d = fabsf(add_rn(a.scales[i], -off));
    amax = d > amax ? d : amax;
  }
  float step = amax / 127.0f;
  store_raw<float>(a.encoded + a.scales_offset, g, step);
  for (uint64_t i = g * 256u; i < end; ++i) {
    int8_t q = dq_code(a.scales[i], step, off);
    store_raw<int8_t>(a.encoded + a.q8_offset, i, q);
    float s = dq_scale(q, step, off);
    if (!(s <= 3.40282347e+38f)) *a.bad_input = 1;  // overflowed to infinity
    a.scales[i] = s;
  }
}

// Double quant, format v2: one thread per group stores the group's maximum and its blocks'
// 7-bit codes (the group's 224 code bytes are its own: 256 * 7 bits), and replaces the absmax
// values with the read-back scales.  The code bytes must be zeroed first.
KVTIER_HD void dq7_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t g = thread_index(block, dim, thread);
  if (g >= a.num_groups) return;
  uint64_t end = (g + 1) * 256u < a.num_blocks ? (g + 1) * 256u : a.num_blocks;
  float m = 0;
  for (uint64_t i = g * 256u; i < end; ++i) m = a.scales[i] > m ? a.scales[i] : m;
  store_raw<float>(a.encoded + a.scales_offset, g, m);
  for (uint64_t i = g * 256u; i < end; ++i) {
    uint32_t q = dq7_code(a.scales[i], m);
    put_q7(a.encoded + a.q8_offset, i, q);
    a.scales[i] = dq7_scale(q, m);
  }
}

// One thread per code byte (elements 2j and 2j+1); an odd count's last low nibble is the
// padding code 7 (bitsandbytes quantizes its zero padding).
KVTIER_HD void codes_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t j = thread_index(block, dim, thread);
  uint64_t k = 2 * j;
  if (k >= a.n) return;
  float inv0 = inverse_scale(a.scales[scale_index(k, a.cols, a.column_blocks)]);
  uint32_t lo = KVTIER_NF4_PAD_CODE;
  if (k + 1 < a.n) {
    float inv1 = inverse_scale(a.scales[scale_index(k + 1, a.cols, a.column_blocks)]);
    lo = encode_value(load_elem(a.src, k + 1, a.type), inv1);
  }
  uint32_t byte = encode_value(load_elem(a.src, k, a.type), inv0) << 4 | lo;
  a.encoded[a.codes_offset + j] = static_cast<uint8_t>(byte);
}

// The scale of scale block b as the decoder sees it.
KVTIER_HD float stored_scale(const CodecArgs& a, uint64_t b) {
  if (!a.double_quant) return load_raw<float>(a.encoded + a.scales_offset, b);
  if (a.log_dq) {
    float m = load_raw<float>(a.encoded + a.scales_offset, b / 256u);
    return dq7_scale(get_q7(a.encoded + a.q8_offset, b), m);
  }
  float step = load_raw<float>(a.encoded + a.scales_offset, b / 256u);
  float off = load_raw<float>(a.encoded + 40, 0);
  return dq_scale(load_raw<int8_t>(a.encoded + a.q8_offset, b), step, off);
}

// One thread per code byte: two output elements of `type`.
KVTIER_HD void decode_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t j = thread_index(block, dim, thread);
  uint64_t k = 2 * j;
  if (k >= a.n) return;
  uint32_t byte = a.encoded[a.codes_offset + j];
  float s0 = stored_scale(a, scale_index(k, a.cols, a.column_blocks));
  store_elem(a.dst, k, a.type, mul_rn(code_value(byte >> 4), s0));
  if (k + 1 < a.n) {
    float s1 = stored_scale(a, scale_index(k + 1, a.cols, a.column_blocks));
    store_elem(a.dst, k + 1, a.type, mul_rn(code_value(byte & 15u), s1));
  }
}

}  // namespace kvtier::nf4::dev
