// Bodies of the NF4 CUDA kernels, one function per kernel, each taking the thread's
// (blockIdx.x, blockDim.x, threadIdx.x).  nf4_cuda.cu wraps each in a __global__ function;
// kernels/tests/nf4_cuda_grid_test.cpp runs the same bodies over the whole grid on the CPU.
// Compiles as C++17 (nvcc) and C++20 (g++).  The launcher runs them in batches
// (nf4_cuda_batch.h).
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
  // 0 while the input is good; 1: NaN/Inf (absmax pass: nothing was written to `encoded`),
  // 2: a read-back double-quant scale overflowed (the header was written and must be cleared).
  uint32_t* bad_input = nullptr;
};

// 16 bytes, loaded and stored as one vector on the device.
struct alignas(16) Vec16 {
  uint32_t w[4];
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
    if (!(s <= 3.40282347e+38f)) *a.bad_input = 2;  // overflowed to infinity
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

// Encode, first step after the absmax pass: one thread per byte before the codes, the header
// (`header`, a.header_size bytes) then zeros, which v2's 7-bit codes are ORed into.
KVTIER_HD void prepare_thread(const CodecArgs& a, const uint8_t* header, uint32_t block,
                              uint32_t dim, uint32_t thread) {
  uint64_t i = thread_index(block, dim, thread);
  if (i >= a.codes_offset) return;
  a.encoded[i] = i < a.header_size ? header[i] : 0;
}

// Encode without double quant: one thread per scale block stores its scale.
KVTIER_HD void scales_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t b = thread_index(block, dim, thread);
  if (b >= a.num_blocks) return;
  store_raw<float>(a.encoded + a.scales_offset, b, a.scales[b]);
}

// Elements per thread of the code passes: 4 code bytes, one 16-byte vector of fp16/bf16.  In
// row blocks the 8 share one scale (8 divides 64).
inline constexpr uint32_t kElemsPerThread = 8;

KVTIER_HD bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16u == 0;
}

// Elements k0 .. k0+count-1 of src as fp32; whole aligned groups as vectors.
KVTIER_HD void load8(const void* src, uint64_t k0, uint32_t count, uint8_t type, float* x) {
  if (count == 8 && aligned16(src) && type != kElemF32) {
    Vec16 v = load_raw<Vec16>(src, k0 / 8u);
    for (uint32_t i = 0; i < 8; ++i) {
      uint16_t h = static_cast<uint16_t>(v.w[i / 2] >> (16u * (i % 2)));
      x[i] = type == kElemF16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    return;
  }
  if (count == 8 && aligned16(src)) {
    for (uint32_t half = 0; half < 2; ++half) {
      Vec16 v = load_raw<Vec16>(src, k0 / 4u + half);
      for (uint32_t i = 0; i < 4; ++i) x[4 * half + i] = bits_f32(v.w[i]);
    }
    return;
  }
  for (uint32_t i = 0; i < 8; ++i) x[i] = i < count ? load_elem(src, k0 + i, type) : 0.0f;
}

// y[0 .. count) to elements k0 .. of dst, converted to `type`; whole aligned groups as vectors.
KVTIER_HD void store8(void* dst, uint64_t k0, uint32_t count, uint8_t type, const float* y) {
  if (count == 8 && aligned16(dst) && type != kElemF32) {
    Vec16 v;
    for (uint32_t i = 0; i < 4; ++i) {
      uint32_t lo = type == kElemF16 ? f32_to_f16(y[2 * i]) : f32_to_bf16(y[2 * i]);
      uint32_t hi = type == kElemF16 ? f32_to_f16(y[2 * i + 1]) : f32_to_bf16(y[2 * i + 1]);
      v.w[i] = lo | hi << 16;
    }
    store_raw<Vec16>(dst, k0 / 8u, v);
    return;
  }
  if (count == 8 && aligned16(dst)) {
    for (uint32_t half = 0; half < 2; ++half) {
      Vec16 v;
      for (uint32_t i = 0; i < 4; ++i) v.w[i] = f32_bits(y[4 * half + i]);
      store_raw<Vec16>(dst, k0 / 4u + half, v);
    }
    return;
  }
  for (uint32_t i = 0; i < 8; ++i)
    if (i < count) store_elem(dst, k0 + i, type, y[i]);
}

// One thread per 8 elements (4 code bytes, written as one 32-bit word when whole).  An odd
// count's last low nibble is the padding code 7 (bitsandbytes quantizes its zero padding).
KVTIER_HD void codes8_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t j = thread_index(block, dim, thread);
  uint64_t k0 = kElemsPerThread * j;
  if (k0 >= a.n) return;
  uint32_t count = a.n - k0 < 8u ? static_cast<uint32_t>(a.n - k0) : 8u;
  float x[8];
  load8(a.src, k0, count, a.type, x);
  float inv = a.column_blocks ? 0.0f : inverse_scale(a.scales[k0 / 64u]);
  uint32_t code[8];
  for (uint32_t i = 0; i < 8; ++i) {
    if (i >= count) {
      code[i] = KVTIER_NF4_PAD_CODE;
      continue;
    }
    float v = a.column_blocks ? inverse_scale(a.scales[scale_index(k0 + i, a.cols, true)]) : inv;
    code[i] = encode_value(x[i], v);
  }
  uint8_t* out = a.encoded + a.codes_offset;
  if (count == 8) {
    uint32_t word = 0;
    for (uint32_t b = 0; b < 4; ++b) word |= (code[2 * b] << 4 | code[2 * b + 1]) << (8u * b);
    store_raw<uint32_t>(out, j, word);
    return;
  }
  for (uint32_t b = 0; b < 4; ++b)
    if (2 * b < count) out[4 * j + b] = static_cast<uint8_t>(code[2 * b] << 4 | code[2 * b + 1]);
}

// One thread per 8 output elements of `type` (4 code bytes, read as one word when whole).
KVTIER_HD void decode8_thread(const CodecArgs& a, uint32_t block, uint32_t dim, uint32_t thread) {
  uint64_t j = thread_index(block, dim, thread);
  uint64_t k0 = kElemsPerThread * j;
  if (k0 >= a.n) return;
  uint32_t count = a.n - k0 < 8u ? static_cast<uint32_t>(a.n - k0) : 8u;
  const uint8_t* codes = a.encoded + a.codes_offset;
  uint32_t word = 0;
  if (count == 8) {
    word = load_raw<uint32_t>(codes, j);
  } else {
    for (uint32_t b = 0; b < 4; ++b)
      if (2 * b < count) word |= static_cast<uint32_t>(codes[4 * j + b]) << (8u * b);
  }
  float s = a.column_blocks ? 0.0f : stored_scale(a, k0 / 64u);
  float y[8];
  for (uint32_t i = 0; i < 8; ++i) {
    if (i >= count) {  // past the end: no scale to read
      y[i] = 0.0f;
      continue;
    }
    uint32_t byte = (word >> (8u * (i / 2))) & 0xFFu;
    uint32_t code = i % 2 == 0 ? byte >> 4 : byte & 15u;
    float scale = a.column_blocks ? stored_scale(a, scale_index(k0 + i, a.cols, true)) : s;
    y[i] = mul_rn(code_value(code), scale);
  }
  store8(a.dst, k0, count, a.type, y);
}

}  // namespace kvtier::nf4::dev
