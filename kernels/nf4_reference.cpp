// The reference NF4 codec: docs/nf4.md written as code, one element at a time.  It shares only
// the format plumbing (plan, header I/O) and the exact float conversions with the fast paths;
// the quantizer is a plain count over the midpoint table, not bitsandbytes' decision tree.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4::reference {
namespace {

constexpr float kCode[16] = KVTIER_NF4_CODEBOOK;
constexpr float kMid[15] = KVTIER_NF4_MIDPOINTS;

// Nearest code, ties to the lower one: the number of midpoints strictly below t.
uint8_t nearest_code(float t) {
  uint8_t code = 0;
  for (float m : kMid) code += t > m ? 1 : 0;
  return code;
}

float load(const std::byte* src, DType t, uint64_t i) {
  uint16_t h;
  float f;
  switch (t) {
    case DType::kF32:
      std::memcpy(&f, src + 4 * i, 4);
      return f;
    case DType::kF16:
      std::memcpy(&h, src + 2 * i, 2);
      return dev::f16_to_f32(h);
    default:
      std::memcpy(&h, src + 2 * i, 2);
      return dev::bf16_to_f32(h);
  }
}

void store(std::byte* dst, DType t, uint64_t i, float v) {
  uint16_t h;
  switch (t) {
    case DType::kF32:
      std::memcpy(dst + 4 * i, &v, 4);
      return;
    case DType::kF16:
      h = dev::f32_to_f16(v);
      break;
    default:
      h = dev::f32_to_bf16(v);
      break;
  }
  std::memcpy(dst + 2 * i, &h, 2);
}

// Which absmax element (r, c) of a [rows, cols] tensor uses.
uint64_t block_of(const Params& p, uint64_t r, uint64_t c) {
  if (p.layout == Nf4Layout::kRowBlocks) return (r * p.cols + c) / kBlockSize;
  return (r / kBlockSize) * p.cols + c;
}

}  // namespace

Status encode(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst) {
  if (Status st = validate(p); !st) return st;
  if (p.keep_outlier_channels) return encode_outliers(p, src, dst, encode);
  Header h = plan(p);
  uint64_t n = p.rows * p.cols;
  if (src.size() != n * dtype_size(p.dtype) || dst.size() < h.total_size) {
    return error(Errc::kInvalidArgument, "nf4 reference: bad buffer sizes");
  }
  std::memset(dst.data(), 0, h.total_size);

  std::vector<float> absmax(h.num_blocks, 0.0f);
  for (uint64_t r = 0; r < p.rows; ++r) {
    for (uint64_t c = 0; c < p.cols; ++c) {
      float x = load(src.data(), p.dtype, r * p.cols + c);
      if (!std::isfinite(x)) return error(Errc::kInvalidArgument, "nf4: input contains NaN or Inf");
      float& a = absmax[block_of(p, r, c)];
      a = std::max(a, std::fabs(x));
    }
  }
  for (float& a : absmax) {
    if (a < std::numeric_limits<float>::min()) a = 0.0f;  // below fp32's normal range
  }

  std::byte* out = dst.data();
  if (p.double_quant && p.version != kVersion1) {
    // v2: per group its maximum M (stored) and per block the log-domain code nearest to a:
    // the number of thresholds M * 2^(-(j + 1/2) / 16), j < 126, above a (127 when a is 0).
    constexpr float kThreshold[126] = KVTIER_NF4_DQ_LOG_THRESHOLDS;
    constexpr float kScale[127] = KVTIER_NF4_DQ_LOG_SCALES;
    auto* q7 = reinterpret_cast<uint8_t*>(out + h.q8_offset);
    for (uint64_t g = 0; g < h.num_groups; ++g) {
      uint64_t begin = g * kDqGroupSize, end = std::min(h.num_blocks, begin + kDqGroupSize);
      float m = 0;
      for (uint64_t i = begin; i < end; ++i) m = std::max(m, absmax[i]);
      std::memcpy(out + h.scales_offset + 4 * g, &m, 4);
      for (uint64_t i = begin; i < end; ++i) {
        uint32_t q = 127;
        if (absmax[i] > 0.0f) {
          q = 0;
          for (float t : kThreshold) q += absmax[i] < m * t ? 1 : 0;
        }
        for (uint32_t bit = 0; bit < 7; ++bit) {  // bit 7i + bit of the section, LSB first
          uint64_t at = 7 * i + bit;
          q7[at / 8] |= static_cast<uint8_t>(((q >> bit) & 1) << (at % 8));
        }
        absmax[i] = q == 127 ? 0.0f : m * kScale[q];
      }
    }
  } else if (p.double_quant) {
    double total = 0;  // group partial sums first, then their sum: the order is the spec
    for (uint64_t g = 0; g < h.num_groups; ++g) {
      double sum = 0;
      for (uint64_t i = g * kDqGroupSize; i < std::min(h.num_blocks, (g + 1) * kDqGroupSize); ++i) {
        sum += absmax[i];
      }
      total += sum;
    }
    h.dq_offset = static_cast<float>(total / static_cast<double>(h.num_blocks));
    for (uint64_t g = 0; g < h.num_groups; ++g) {
      uint64_t begin = g * kDqGroupSize, end = std::min(h.num_blocks, begin + kDqGroupSize);
      float amax = 0;
      for (uint64_t i = begin; i < end; ++i)
        amax = std::max(amax, std::fabs(absmax[i] - h.dq_offset));
      float step = amax / 127.0f;
      std::memcpy(out + h.scales_offset + 4 * g, &step, 4);
      for (uint64_t i = begin; i < end; ++i) {
        float q = step > 0 ? std::nearbyint((absmax[i] - h.dq_offset) / step) : 0.0f;
        q = std::clamp(q, -127.0f, 127.0f);
        auto q8 = static_cast<int8_t>(q);
        std::memcpy(out + h.q8_offset + i, &q8, 1);
        float prod = static_cast<float>(q8) * step;
        absmax[i] = std::max(0.0f, prod + h.dq_offset);  // the scale the decoder will see
        if (!std::isfinite(absmax[i])) {
          std::memset(out, 0, kHeaderSize);
          return error(Errc::kInvalidArgument, "nf4: values too large for double quantization");
        }
      }
    }
  } else {
    std::memcpy(out + h.scales_offset, absmax.data(), absmax.size() * 4);
  }

  auto* codes = reinterpret_cast<uint8_t*>(out + h.codes_offset);
  for (uint64_t r = 0; r < p.rows; ++r) {
    for (uint64_t c = 0; c < p.cols; ++c) {
      uint64_t k = r * p.cols + c;
      float scale = absmax[block_of(p, r, c)];
      uint8_t code = 7;  // zero block
      if (scale >= std::numeric_limits<float>::min()) {
        float inv = 1.0f / scale;  // bitsandbytes multiplies by the reciprocal
        code = nearest_code(load(src.data(), p.dtype, k) * inv);
      }
      codes[k / 2] |= static_cast<uint8_t>(k % 2 == 0 ? code << 4 : code);
    }
  }
  if (n % 2 == 1) codes[n / 2] |= 7;  // padding: bitsandbytes quantizes 0.0, code 7
  write_header(h, out);
  return Status::ok();
}

Status decode(std::span<const std::byte> encoded, DType out_dtype, std::span<std::byte> dst) {
  Result<Header> h = parse_header(encoded);
  if (!h) return h.status();
  const Params& p = h->params;
  if (dtype_size(out_dtype) == 0 || out_dtype == DType::kU8 || out_dtype == DType::kI32 ||
      out_dtype == DType::kI64 || dst.size() < p.rows * p.cols * dtype_size(out_dtype)) {
    return error(Errc::kInvalidArgument, "nf4 reference: bad output dtype or size");
  }
  Result<std::vector<float>> scales = read_scales(*h, encoded);
  if (!scales) return scales.status();
  const auto* codes = reinterpret_cast<const uint8_t*>(encoded.data() + h->codes_offset);
  for (uint64_t r = 0; r < p.rows; ++r) {
    for (uint64_t c = 0; c < p.cols; ++c) {
      uint64_t k = r * p.cols + c;
      uint8_t code = k % 2 == 0 ? codes[k / 2] >> 4 : codes[k / 2] & 15;
      store(dst.data(), out_dtype, k, kCode[code] * (*scales)[block_of(p, r, c)]);
    }
  }
  return h->num_outliers > 0 ? restore_outliers(*h, encoded, out_dtype, dst) : Status::ok();
}

}  // namespace kvtier::nf4::reference
