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

// The low nibble of the last byte when the value count is odd: bitsandbytes pads a tensor
// with 0.0 and quantizes the padding like any value, which gives code 7.
#define KVTIER_NF4_PAD_CODE 7u

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

#if defined(__CUDACC__)
// The tables indexed at run time, for the device: in global memory (read through the
// read-only cache).  A function-local constexpr array indexed at run time is built on every
// thread's stack instead: 512 bytes of local memory per thread in the old decode kernel.
static __device__ const float kDevCodebook[16] = KVTIER_NF4_CODEBOOK;
#endif

KVTIER_HD float code_value(uint32_t code) {
#if defined(__CUDA_ARCH__)
  return __ldg(&kDevCodebook[code & 15u]);
#else
  constexpr float kCode[16] = KVTIER_NF4_CODEBOOK;
  return kCode[code & 15u];
#endif
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

// Double quantization, format v1 (docs/nf4.md): absmax a_i of group g is stored as
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

// Double quantization, format v2 (docs/nf4.md): the absmax a_i of group g is stored as a 7-bit
// code q_i under the group's maximum M_g: scale = M_g * 2^(-q/16) for q < 127, 0 for q = 127.
// The encoder picks the code nearest in the log domain by counting thresholds 2^(-(j+1/2)/16),
// so every implementation agrees without computing a logarithm.
#define KVTIER_NF4_DQ_LOG_SCALES                                                                   \
  {                                                                                                \
    1.0f, 0.957603276f, 0.917004049f, 0.878126085f, 0.840896428f, 0.805245161f, 0.771105409f,      \
        0.738413095f, 0.707106769f, 0.677127779f, 0.648419797f, 0.620928884f, 0.594603539f,        \
        0.56939429f, 0.545253873f, 0.522136867f, 0.5f, 0.478801638f, 0.458502024f, 0.439063042f,   \
        0.420448214f, 0.402622581f, 0.385552704f, 0.369206548f, 0.353553385f, 0.338563889f,        \
        0.324209899f, 0.310464442f, 0.297301769f, 0.284697145f, 0.272626936f, 0.261068434f, 0.25f, \
        0.239400819f, 0.229251012f, 0.219531521f, 0.210224107f, 0.20131129f, 0.192776352f,         \
        0.184603274f, 0.176776692f, 0.169281945f, 0.162104949f, 0.155232221f, 0.148650885f,        \
        0.142348573f, 0.136313468f, 0.130534217f, 0.125f, 0.119700409f, 0.114625506f,              \
        0.109765761f, 0.105112053f, 0.100655645f, 0.0963881761f, 0.0923016369f, 0.0883883461f,     \
        0.0846409723f, 0.0810524747f, 0.0776161104f, 0.0743254423f, 0.0711742863f, 0.0681567341f,  \
        0.0652671084f, 0.0625f, 0.0598502047f, 0.0573127531f, 0.0548828803f, 0.0525560267f,        \
        0.0503278226f, 0.048194088f, 0.0461508185f, 0.0441941731f, 0.0423204862f, 0.0405262373f,   \
        0.0388080552f, 0.0371627212f, 0.0355871432f, 0.0340783671f, 0.0326335542f, 0.03125f,       \
        0.0299251024f, 0.0286563765f, 0.0274414402f, 0.0262780134f, 0.0251639113f, 0.024097044f,   \
        0.0230754092f, 0.0220970865f, 0.0211602431f, 0.0202631187f, 0.0194040276f, 0.0185813606f,  \
        0.0177935716f, 0.0170391835f, 0.0163167771f, 0.015625f, 0.0149625512f, 0.0143281883f,      \
        0.0137207201f, 0.0131390067f, 0.0125819556f, 0.012048522f, 0.0115377046f, 0.0110485433f,   \
        0.0105801215f, 0.0101315593f, 0.00970201381f, 0.00929068029f, 0.00889678579f,              \
        0.00851959176f, 0.00815838855f, 0.0078125f, 0.00748127559f, 0.00716409413f,                \
        0.00686036004f, 0.00656950334f, 0.00629097782f, 0.00602426101f, 0.00576885231f,            \
        0.00552427163f, 0.00529006077f, 0.00506577967f, 0.0048510069f, 0.00464534014f,             \
        0.00444839289f, 0.00425979588f                                                             \
  }
#define KVTIER_NF4_DQ_LOG_THRESHOLDS                                                              \
  {                                                                                               \
    0.978572071f, 0.93708384f, 0.897354543f, 0.859309673f, 0.822877765f, 0.787990451f,            \
        0.754582226f, 0.722590387f, 0.69195497f, 0.662618339f, 0.634525478f, 0.607623696f,        \
        0.58186245f, 0.557193398f, 0.53357023f, 0.510948598f, 0.489286035f, 0.46854192f,          \
        0.448677272f, 0.429654837f, 0.411438882f, 0.393995225f, 0.377291113f, 0.361295193f,       \
        0.345977485f, 0.33130917f, 0.317262739f, 0.303811848f, 0.290931225f, 0.278596699f,        \
        0.266785115f, 0.255474299f, 0.244643018f, 0.23427096f, 0.224338636f, 0.214827418f,        \
        0.205719441f, 0.196997613f, 0.188645557f, 0.180647597f, 0.172988743f, 0.165654585f,       \
        0.158631369f, 0.151905924f, 0.145465612f, 0.13929835f, 0.133392558f, 0.12773715f,         \
        0.122321509f, 0.11713548f, 0.112169318f, 0.107413709f, 0.102859721f, 0.0984988064f,       \
        0.0943227783f, 0.0903237984f, 0.0864943713f, 0.0828272924f, 0.0793156847f, 0.075952962f,  \
        0.0727328062f, 0.0696491748f, 0.0666962788f, 0.0638685748f, 0.0611607544f, 0.05856774f,   \
        0.056084659f, 0.0537068546f, 0.0514298603f, 0.0492494032f, 0.0471613891f, 0.0451618992f,  \
        0.0432471856f, 0.0414136462f, 0.0396578424f, 0.037976481f, 0.0363664031f, 0.0348245874f,  \
        0.0333481394f, 0.0319342874f, 0.0305803772f, 0.02928387f, 0.0280423295f, 0.0268534273f,   \
        0.0257149301f, 0.0246247016f, 0.0235806946f, 0.0225809496f, 0.0216235928f, 0.0207068231f, \
        0.0198289212f, 0.0189882405f, 0.0181832016f, 0.0174122937f, 0.0166740697f, 0.0159671437f, \
        0.0152901886f, 0.014641935f, 0.0140211647f, 0.0134267136f, 0.0128574651f, 0.0123123508f,  \
        0.0117903473f, 0.0112904748f, 0.0108117964f, 0.0103534115f, 0.00991446059f,               \
        0.00949412026f, 0.00909160078f, 0.00870614685f, 0.00833703484f, 0.00798357185f,           \
        0.0076450943f, 0.0073209675f, 0.00701058237f, 0.00671335682f, 0.00642873254f,             \
        0.0061561754f, 0.00589517364f, 0.0056452374f, 0.00540589821f, 0.00517670577f,             \
        0.0049572303f, 0.00474706013f, 0.00454580039f, 0.00435307343f                             \
  }

#if defined(__CUDACC__)
static __device__ const float kDevDqLogScales[127] = KVTIER_NF4_DQ_LOG_SCALES;  // see kDevCodebook
static __device__ const float kDevDqLogThresholds[126] = KVTIER_NF4_DQ_LOG_THRESHOLDS;
#endif

KVTIER_HD float dq7_scale(uint32_t q, float gmax) {
  if (q >= 127u) return 0.0f;
#if defined(__CUDA_ARCH__)
  return mul_rn(gmax, __ldg(&kDevDqLogScales[q]));
#else
  constexpr float kScale[127] = KVTIER_NF4_DQ_LOG_SCALES;
  return mul_rn(gmax, kScale[q]);
#endif
}

// Code of absmax a (0 or >= 2^-126, a <= gmax): the number of thresholds j with
// a < gmax * T[j].  The products do not increase with j, so a binary search finds the count.
KVTIER_HD uint32_t dq7_code(float a, float gmax) {
#if defined(__CUDA_ARCH__)
  const float* kThreshold = kDevDqLogThresholds;
#else
  constexpr float kThreshold[126] = KVTIER_NF4_DQ_LOG_THRESHOLDS;
#endif
  if (!(a >= KVTIER_NF4_MIN_SCALE)) return 127u;
  uint32_t lo = 0, hi = 126;
  while (lo < hi) {
    uint32_t mid = (lo + hi) / 2;
    if (a < mul_rn(gmax, kThreshold[mid])) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The 7-bit codes are packed LSB first: code i occupies bits [7i, 7i + 7) of the section.
KVTIER_HD uint32_t get_q7(const uint8_t* bytes, uint64_t i) {
  uint64_t bit = 7 * i;
  uint32_t sh = static_cast<uint32_t>(bit & 7u);
  uint32_t v = static_cast<uint32_t>(bytes[bit >> 3]) >> sh;
  if (sh > 1) v |= static_cast<uint32_t>(bytes[(bit >> 3) + 1]) << (8u - sh);
  return v & 0x7Fu;
}

// ORs code q into zeroed section bytes.
KVTIER_HD void put_q7(uint8_t* bytes, uint64_t i, uint32_t q) {
  uint64_t bit = 7 * i;
  uint32_t sh = static_cast<uint32_t>(bit & 7u);
  bytes[bit >> 3] = static_cast<uint8_t>(bytes[bit >> 3] | ((q << sh) & 0xFFu));
  if (sh > 1)
    bytes[(bit >> 3) + 1] = static_cast<uint8_t>(bytes[(bit >> 3) + 1] | (q >> (8u - sh)));
}

}  // namespace kvtier::nf4::dev
