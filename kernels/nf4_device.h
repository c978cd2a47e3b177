// The per-element and per-block NF4 logic shared by the scalar CPU path and the CUDA kernels.
// Everything here compiles as plain C++ (g++) and as CUDA (__host__ __device__), so the code
// the GPU runs is the code the CPU tests run.  No std:: calls that the device lacks.
//
// Float rules that keep every implementation byte-exact: products and sums are rounded
// separately (no fused multiply-add: device code uses __fmul_rn/__fadd_rn, host code is
// built without -ffp-contract=fast), division is IEEE, rounding to integers is to nearest even.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVTIER_HD __host__ __device__ __forceinline__
#else
#define KVTIER_HD inline
#endif

namespace kvtier::nf4::dev {

// bitsandbytes' NF4 codebook (functional.py get_4bit_type("nf4"), kernels.cu
// nf4_dequantization_lut), as fp32.  Ascending; code 7 is exactly 0.
#define KVTIER_NF4_CODEBOOK                                                                     \
  {                                                                                             \
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,                   \
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,              \
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, \
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f                    \
  }

// Thresholds between neighbouring codes, exactly the fp32 literals of bitsandbytes'
// dQuantizeNF4 decision tree.  Code = number of thresholds strictly below x, so a value equal
// to a threshold goes to the lower code.
#define KVTIER_NF4_MIDPOINTS                                                                 \
  {                                                                                          \
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f, \
        -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f,                \
        0.03979014977812767f, 0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, \
        0.3893125355243683f, 0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f   \
  }

// Smallest normal fp32 (2^-126).  A block whose scale is below it is stored as all code 7,
// so 1/scale is always finite.
#define KVTIER_NF4_MIN_SCALE 1.17549435e-38f

KVTIER_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

KVTIER_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVTIER_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVTIER_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// IEEE binary16 -> binary32, exact (subnormals included).
KVTIER_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // Subnormal: man * 2^-24, exact in fp32.
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return bits_f32(sign | f32_bits(v));
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// binary32 -> binary16, round to nearest even; overflow gives infinity, NaN stays NaN.
KVTIER_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u);
  if (ax >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: infinity
  if (ax < 0x38800000u) {                        // below 2^-14: fp16 subnormal or zero
    if (ax < 0x33000000u) return sign;           // below 2^-25: rounds to zero
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14..24: m >> shift is the subnormal mantissa
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15 (in the shifted field)
  uint32_t rem = r & 0x1FFFu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<uint16_t>(r);
}

KVTIER_HD float bf16_to_f32(uint16_t h) {
  return bits_f32(static_cast<uint32_t>(h) << 16);
}

// binary32 -> bfloat16, round to nearest even; NaN stays NaN.
KVTIER_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// Element types, numerically equal to kvtier::DType (kvtier/types.h) for the float types.
enum ElemType : uint8_t { kElemF16 = 1, kElemBF16 = 2, kElemF32 = 3 };

// Sources and destinations may be unaligned on the host (std::byte spans); device buffers
// are always aligned to the element size.
template <typename T>
KVTIER_HD T load_raw(const void* base, uint64_t i) {
#if defined(__CUDA_ARCH__)
  return static_cast<const T*>(base)[i];
#else
  T v;
  std::memcpy(&v, static_cast<const char*>(base) + i * sizeof(T), sizeof(T));
  return v;
#endif
}

template <typename T>
KVTIER_HD void store_raw(void* base, uint64_t i, T v) {
#if defined(__CUDA_ARCH__)
  static_cast<T*>(base)[i] = v;
#else
  std::memcpy(static_cast<char*>(base) + i * sizeof(T), &v, sizeof(T));
#endif
}

KVTIER_HD float load_elem(const void* base, uint64_t i, uint8_t type) {
  if (type == kElemF32) return load_raw<float>(base, i);
  uint16_t h = load_raw<uint16_t>(base, i);
  return type == kElemF16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// |x| as an integer key that orders like |x| and puts Inf and NaN above every finite value.
KVTIER_HD uint32_t abs_key(const void* base, uint64_t i, uint8_t type) {
  if (type == kElemF32) return load_raw<uint32_t>(base, i) & 0x7FFFFFFFu;
  return load_raw<uint16_t>(base, i) & 0x7FFFu;
}

KVTIER_HD bool key_is_finite(uint32_t key, uint8_t type) {
  return key < (type == kElemF32 ? 0x7F800000u : type == kElemF16 ? 0x7C00u : 0x7F80u);
}

KVTIER_HD float key_to_f32(uint32_t key, uint8_t type) {
  if (type == kElemF32) return bits_f32(key);
  return type == kElemF16 ? f16_to_f32(static_cast<uint16_t>(key))
                          : bf16_to_f32(static_cast<uint16_t>(key));
}

KVTIER_HD void store_elem(void* base, uint64_t i, uint8_t type, float v) {
  if (type == kElemF32) {
    store_raw<float>(base, i, v);
  } else {
    store_raw<uint16_t>(base, i, type == kElemF16 ? f32_to_f16(v) : f32_to_bf16(v));
  }
}

// bitsandbytes' dQuantizeNF4: x is already multiplied by 1/scale.  NaN maps to 0, but NaN
// never reaches here (inputs are checked, scales are finite and >= 2^-126).
KVTIER_HD uint32_t quantize_value(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15u : 14u;
      return x > 0.5016634166240692f ? 13u : 12u;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11u : 10u;
    return x > 0.1202552504837513f ? 9u : 8u;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7u : 6u;
    return x > -0.23460740596055984f ? 5u : 4u;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3u : 2u;
  return x > -0.8480964004993439f ? 1u : 0u;
}

KVTIER_HD float code_value(uint32_t code) {
  constexpr float kCode[16] = KVTIER_NF4_CODEBOOK;
  return kCode[code & 15u];
}

// The multiplier applied before quantize_value; 0 marks a block stored as all code 7.
KVTIER_HD float inverse_scale(float scale) {
  return scale >= KVTIER_NF4_MIN_SCALE ? 1.0f / scale : 0.0f;
}

KVTIER_HD uint32_t encode_value(float x, float inv) {
  return inv == 0.0f ? 7u : quantize_value(mul_rn(x, inv));
}

// Index of the scale (absmax) of element (r, c) of a [rows, cols] tensor; k = r * cols + c.
// Row blocks: bitsandbytes' blocks of 64 over the flattened tensor.  Column blocks: 64 rows of
// one column; scale index (r / 64) * cols + c, so one row group's scales are contiguous.
KVTIER_HD uint64_t scale_index(uint64_t k, uint64_t cols, bool column_blocks) {
  if (!column_blocks) return k / 64u;
  uint64_t r = k / cols;
  return (r / 64u) * cols + (k - r * cols);
}

// Double quantization (kvtier's own, docs/nf4.md): absmax a_i of group g is stored as
// q_i = rint((a_i - offset) / step_g), |q_i| <= 127, and read back as below.
KVTIER_HD float dq_scale(int8_t q, float step, float offset) {
  float a = add_rn(mul_rn(static_cast<float>(q), step), offset);
  return a > 0.0f ? a : 0.0f;
}

KVTIER_HD int8_t dq_code(float a, float step, float offset) {
  if (!(step > 0.0f)) return 0;
  float t = rintf(add_rn(a, -offset) / step);
  t = t > 127.0f ? 127.0f : (t < -127.0f ? -127.0f : t);
  return static_cast<int8_t>(t);
}

}  // namespace kvtier::nf4::dev
