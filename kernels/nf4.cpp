// NF4 public entry points: format planning, header I/O, double quantization and dispatch to
// the fastest CPU path.  The format is specified in docs/nf4.md.
#include "kernels/nf4.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4 {
namespace {

static_assert(std::endian::native == std::endian::little, "the format is little-endian");

constexpr uint64_t kMaxElements = uint64_t{1} << 56;
constexpr uint8_t kFlagDoubleQuant = 1;
constexpr uint8_t kFlagOutliers = 2;

bool is_float(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32;
}

template <typename T>
void put(std::byte* dst, size_t off, T v) {
  std::memcpy(dst + off, &v, sizeof v);
}

template <typename T>
T get(const std::byte* src, size_t off) {
  T v;
  std::memcpy(&v, src + off, sizeof v);
  return v;
}

struct Impl {
  bool (*absmax)(const Shape&, const void*, float*);
  void (*quantize)(const Shape&, const void*, const float*, uint8_t*);
  void (*dequantize)(const Shape&, const uint8_t*, const float*, void*);
  const char* name;
  // absmax (zeroed below 2^-126) and codes in one pass; nullptr: absmax, then quantize.
  bool (*absmax_quantize)(const Shape&, const void*, float*, uint8_t*) = nullptr;
};

const Impl kScalar{scalar::absmax, scalar::quantize, scalar::dequantize, "scalar"};
const Impl kAvx2{avx2::absmax, avx2::quantize, avx2::dequantize, "avx2+f16c"};
const Impl kAvx512{avx512::absmax, avx512::quantize, avx512::dequantize, "avx512",
                   avx512::absmax_quantize};

const Impl& active() {
  static const Impl& impl = avx512::supported() ? kAvx512 : avx2::supported() ? kAvx2 : kScalar;
  return impl;
}

const Impl* by_name(const char* path) {
  if (std::strcmp(path, "scalar") == 0) return &kScalar;
  if (std::strcmp(path, "avx2") == 0 && avx2::supported()) return &kAvx2;
  if (std::strcmp(path, "avx512") == 0 && avx512::supported()) return &kAvx512;
  return nullptr;
}

Status encode_impl(const Impl& impl, const Params& p, std::span<const std::byte> src,
                   std::span<std::byte> dst) {
  if (Status st = validate(p); !st) return st;
  if (p.keep_outlier_channels) {
    return encode_outliers(p, src, dst, [&impl](const Params& q, auto s, auto d) {
      return encode_impl(impl, q, s, d);
    });
  }
  Header h = plan(p);
  uint64_t n = p.rows * p.cols;
  if (src.size() != n * dtype_size(p.dtype)) {
    return error(Errc::kInvalidArgument, "nf4: source is " + std::to_string(src.size()) +
                                             " bytes, expected " +
                                             std::to_string(n * dtype_size(p.dtype)));
  }
  if (dst.size() < h.total_size) {
    return error(Errc::kInvalidArgument, "nf4: destination holds " + std::to_string(dst.size()) +
                                             " bytes, needs " + std::to_string(h.total_size));
  }
  std::byte* out = dst.data();
  Shape s = shape_of(p);
  auto* codes = reinterpret_cast<uint8_t*>(out + h.codes_offset);
  if (!p.double_quant && impl.absmax_quantize != nullptr) {
    // Every byte before the codes is written: header last, scales, then the zero padding.
    std::memset(out, 0, header_size(p.version));
    std::unique_ptr<float[]> absmax(new float[h.num_blocks]);
    if (!impl.absmax_quantize(s, src.data(), absmax.get(), codes)) {
      return error(Errc::kInvalidArgument, "nf4: input contains NaN or Inf");
    }
    std::memcpy(out + h.scales_offset, absmax.get(), h.num_blocks * 4);
    uint64_t end = h.scales_offset + h.num_blocks * 4;
    std::memset(out + end, 0, h.codes_offset - end);
    write_header(h, out);
    return Status::ok();
  }
  std::memset(out, 0, h.codes_offset);  // no valid header until the end; zero padding
  std::vector<float> scales(h.num_blocks);
  if (!impl.absmax(s, src.data(), scales.data())) {
    return error(Errc::kInvalidArgument, "nf4: input contains NaN or Inf");
  }
  for (float& a : scales) {
    if (a < KVTIER_NF4_MIN_SCALE) a = 0.0f;  // stored as a zero block
  }
  if (p.double_quant && p.version != kVersion1) {
    std::vector<float> group_max(h.num_groups);
    double_quantize_log(scales, group_max, reinterpret_cast<uint8_t*>(out + h.q8_offset));
    std::memcpy(out + h.scales_offset, group_max.data(), group_max.size() * 4);
  } else if (p.double_quant) {
    std::vector<float> steps(h.num_groups);
    auto* q8 = reinterpret_cast<int8_t*>(out + h.q8_offset);
    if (!double_quantize(scales, &h.dq_offset, steps, {q8, h.num_blocks})) {
      return error(Errc::kInvalidArgument, "nf4: values too large for double quantization");
    }
    std::memcpy(out + h.scales_offset, steps.data(), steps.size() * 4);
  } else {
    std::memcpy(out + h.scales_offset, scales.data(), scales.size() * 4);
  }
  impl.quantize(s, src.data(), scales.data(), codes);
  write_header(h, out);
  return Status::ok();
}

Status decode_impl(const Impl& impl, std::span<const std::byte> encoded, DType out_dtype,
                   std::span<std::byte> dst) {
  Result<Header> h = parse_header(encoded);
  if (!h) return h.status();
  if (!is_float(out_dtype)) {
    return error(Errc::kInvalidArgument, "nf4: decode needs a float output dtype");
  }
  uint64_t n = h->params.rows * h->params.cols;
  if (dst.size() < n * dtype_size(out_dtype)) {
    return error(Errc::kInvalidArgument, "nf4: destination holds " + std::to_string(dst.size()) +
                                             " bytes, needs " +
                                             std::to_string(n * dtype_size(out_dtype)));
  }
  Result<std::vector<float>> scales = read_scales(*h, encoded);
  if (!scales) return scales.status();
  Shape s = shape_of(h->params);
  s.type = static_cast<uint8_t>(out_dtype);
  impl.dequantize(s, reinterpret_cast<const uint8_t*>(encoded.data() + h->codes_offset),
                  scales->data(), dst.data());
  return h->num_outliers > 0 ? restore_outliers(*h, encoded, out_dtype, dst) : Status::ok();
}

}  // namespace

Status validate(const Params& p) {
  if (!is_float(p.dtype)) return error(Errc::kInvalidArgument, "nf4: dtype must be f16/bf16/f32");
  if (p.layout != Nf4Layout::kRowBlocks && p.layout != Nf4Layout::kColumnBlocks) {
    return error(Errc::kInvalidArgument, "nf4: unknown layout");
  }
  if (p.rows == 0 || p.cols == 0) return error(Errc::kInvalidArgument, "nf4: empty tensor");
  if (p.rows > kMaxElements / p.cols) return error(Errc::kInvalidArgument, "nf4: too large");
  if (p.version != kVersion1 && p.version != kVersion) {
    return error(Errc::kInvalidArgument, "nf4: unknown format version");
  }
  if (p.keep_outlier_channels && !(p.outlier_ratio >= 0.0f && std::isfinite(p.outlier_ratio))) {
    return error(Errc::kInvalidArgument, "nf4: outlier_ratio must be finite and not negative");
  }
  return Status::ok();
}

Header plan(const Params& p) {
  return plan(p, max_outliers(p));
}

Header plan(const Params& p, uint32_t num_outliers) {
  Header h;
  h.params = p;
  uint64_t n = p.rows * p.cols;
  h.num_blocks = p.layout == Nf4Layout::kRowBlocks
                     ? (n + kBlockSize - 1) / kBlockSize
                     : (p.rows + kBlockSize - 1) / kBlockSize * p.cols;
  h.num_groups = p.double_quant ? (h.num_blocks + kDqGroupSize - 1) / kDqGroupSize : 0;
  h.scales_offset = header_size(p.version);
  h.q8_offset = h.scales_offset + 4 * (p.double_quant ? h.num_groups : h.num_blocks);
  const uint64_t q8_bytes = !p.double_quant          ? 0
                            : p.version == kVersion1 ? h.num_blocks
                                                     : (7 * h.num_blocks + 7) / 8;
  uint64_t q8_end = h.q8_offset + q8_bytes;
  h.codes_offset = (q8_end + 15) & ~uint64_t{15};
  h.total_size = h.codes_offset + (n + 1) / 2;
  if (p.keep_outlier_channels) {
    h.num_outliers = num_outliers;
    h.outlier_cols_offset = (h.total_size + 15) & ~uint64_t{15};
    h.outlier_vals_offset =
        (h.outlier_cols_offset + 4 * uint64_t{num_outliers} + 15) & ~uint64_t{15};
    h.total_size = h.outlier_vals_offset + p.rows * num_outliers * dtype_size(p.dtype);
  }
  return h;
}

size_t encoded_size(const Params& p) {
  return validate(p) ? plan(p).total_size : 0;
}

Shape shape_of(const Params& p) {
  return Shape{p.rows * p.cols, p.cols, p.layout == Nf4Layout::kColumnBlocks,
               static_cast<uint8_t>(p.dtype)};
}

void write_header(const Header& h, std::byte* dst) {
  const Params& p = h.params;
  const uint8_t flags =
      (p.double_quant ? kFlagDoubleQuant : 0) | (p.keep_outlier_channels ? kFlagOutliers : 0);
  std::memset(dst, 0, header_size(p.version));
  put<uint32_t>(dst, 0, kMagic);
  put<uint16_t>(dst, 4, p.version);
  if (p.version != kVersion1) {
    put<uint8_t>(dst, 6, static_cast<uint8_t>(p.dtype));
    put<uint8_t>(dst, 7, static_cast<uint8_t>(p.layout));
    put<uint8_t>(dst, 8, flags);
    put<uint32_t>(dst, 12, h.num_outliers);
    put<uint64_t>(dst, 16, p.rows);
    put<uint64_t>(dst, 24, p.cols);
    return;
  }
  put<uint16_t>(dst, 6, kHeaderSizeV1);
  put<uint8_t>(dst, 8, static_cast<uint8_t>(p.dtype));
  put<uint8_t>(dst, 9, static_cast<uint8_t>(p.layout));
  put<uint8_t>(dst, 10, flags);
  put<uint8_t>(dst, 11, kBlockSize);
  put<uint16_t>(dst, 12, p.double_quant ? kDqGroupSize : 0);
  put<uint64_t>(dst, 16, p.rows);
  put<uint64_t>(dst, 24, p.cols);
  put<uint64_t>(dst, 32, h.num_blocks);
  put<float>(dst, 40, h.dq_offset);
  put<uint32_t>(dst, 44, h.num_outliers);
  put<uint64_t>(dst, 48, h.total_size);
}

namespace {

Status corrupt(const std::string& what) {
  return error(Errc::kCorrupt, "nf4: " + what);
}

// The v1 fields beyond dtype, layout, flags, rows and cols; kCorrupt when they disagree.
Status check_v1_fields(const std::byte* b, const Header& h) {
  const Params& p = h.params;
  if (get<uint16_t>(b, 6) != kHeaderSizeV1 || get<uint8_t>(b, 11) != kBlockSize) {
    return corrupt("bad header or block size");
  }
  if (get<uint16_t>(b, 14) != 0 || get<uint64_t>(b, 56) != 0) {
    return corrupt("reserved bytes not zero");
  }
  if (get<uint16_t>(b, 12) != (p.double_quant ? kDqGroupSize : 0)) return corrupt("bad group size");
  if (get<uint64_t>(b, 32) != h.num_blocks) return corrupt("block count does not match shape");
  if (get<uint64_t>(b, 48) != h.total_size) return corrupt("size does not match shape");
  if (!std::isfinite(h.dq_offset) || (!p.double_quant && h.dq_offset != 0.0f)) {
    return corrupt("bad double-quant offset");
  }
  return Status::ok();
}

}  // namespace

Result<Header> parse_header(std::span<const std::byte> encoded) {
  if (encoded.size() < 8) return corrupt("shorter than the header");
  const std::byte* b = encoded.data();
  if (get<uint32_t>(b, 0) != kMagic) return corrupt("bad magic");
  const auto version = get<uint16_t>(b, 4);
  if (version != kVersion1 && version != kVersion) {
    return corrupt("unsupported version " + std::to_string(version));
  }
  const bool v1 = version == kVersion1;
  if (encoded.size() < header_size(version)) return corrupt("shorter than the header");
  const uint8_t flags = get<uint8_t>(b, v1 ? 10 : 8);
  if ((flags & ~(kFlagDoubleQuant | kFlagOutliers)) != 0) return corrupt("unknown flags");
  const uint32_t num_outliers = get<uint32_t>(b, v1 ? 44 : 12);
  if ((flags & kFlagOutliers) == 0 && num_outliers != 0) return corrupt("reserved bytes not zero");
  if (!v1 && (get<uint8_t>(b, 9) != 0 || get<uint16_t>(b, 10) != 0)) {
    return corrupt("reserved bytes not zero");
  }
  Params p;
  p.version = version;
  p.dtype = static_cast<DType>(get<uint8_t>(b, v1 ? 8 : 6));
  p.layout = static_cast<Nf4Layout>(get<uint8_t>(b, v1 ? 9 : 7));
  p.double_quant = (flags & kFlagDoubleQuant) != 0;
  p.keep_outlier_channels = (flags & kFlagOutliers) != 0;
  p.rows = get<uint64_t>(b, 16);
  p.cols = get<uint64_t>(b, 24);
  if (!validate(p)) return corrupt("bad dtype, layout or shape");
  if (num_outliers > max_outliers(p)) return corrupt("too many outlier channels");
  Header h = plan(p, num_outliers);
  if (v1) {
    h.dq_offset = get<float>(b, 40);
    if (Status st = check_v1_fields(b, h); !st) return st;
  }
  if (encoded.size() < h.total_size) return corrupt("truncated");
  if (Status st = check_outlier_cols(h, encoded); !st) return st;
  return h;
}

void double_quantize_log(std::span<float> absmax, std::span<float> group_max, uint8_t* q7) {
  for (size_t g = 0; g < group_max.size(); ++g) {
    const size_t begin = g * kDqGroupSize, end = std::min(absmax.size(), begin + kDqGroupSize);
    float m = 0;
    for (size_t i = begin; i < end; ++i) m = std::max(m, absmax[i]);
    group_max[g] = m;
    for (size_t i = begin; i < end; ++i) {
      const uint32_t q = dev::dq7_code(absmax[i], m);
      dev::put_q7(q7, i, q);
      absmax[i] = dev::dq7_scale(q, m);
    }
  }
}

bool double_quantize(std::span<float> absmax, float* offset, std::span<float> steps,
                     std::span<int8_t> q8) {
  // The mean in a fixed order (per-group partial sums, then their sum, both in double) so
  // every implementation, the GPU's included, gets the same offset.
  double total = 0;
  for (size_t g0 = 0; g0 < absmax.size(); g0 += kDqGroupSize) {
    double sum = 0;
    for (size_t i = g0; i < absmax.size() && i < g0 + kDqGroupSize; ++i) sum += absmax[i];
    total += sum;
  }
  float off = static_cast<float>(total / static_cast<double>(absmax.size()));
  *offset = off;
  for (size_t g = 0; g < steps.size(); ++g) {
    size_t end = std::min(absmax.size(), (g + 1) * kDqGroupSize);
    float amax = 0;
    for (size_t i = g * kDqGroupSize; i < end; ++i)
      amax = std::max(amax, std::fabs(absmax[i] - off));
    float step = amax / 127.0f;
    steps[g] = step;
    for (size_t i = g * kDqGroupSize; i < end; ++i) {
      q8[i] = dev::dq_code(absmax[i], step, off);
      absmax[i] = dev::dq_scale(q8[i], step, off);
      if (!std::isfinite(absmax[i])) return false;
    }
  }
  return true;
}

Result<std::vector<float>> read_scales(const Header& h, std::span<const std::byte> encoded) {
  std::vector<float> scales(h.num_blocks);
  const std::byte* b = encoded.data();
  auto bad = [](float v) { return !std::isfinite(v) || std::signbit(v); };
  if (!h.params.double_quant) {
    std::memcpy(scales.data(), b + h.scales_offset, h.num_blocks * 4);
    for (float a : scales) {
      if (bad(a)) return error(Errc::kCorrupt, "nf4: negative or non-finite absmax");
    }
    return scales;
  }
  if (h.params.version != kVersion1) {
    const auto* q7 = reinterpret_cast<const uint8_t*>(b + h.q8_offset);
    for (uint64_t g = 0; g < h.num_groups; ++g) {
      const float m = get<float>(b, h.scales_offset + 4 * g);
      if (bad(m)) return error(Errc::kCorrupt, "nf4: negative or non-finite group maximum");
      const uint64_t end = std::min<uint64_t>(h.num_blocks, (g + 1) * kDqGroupSize);
      for (uint64_t i = g * kDqGroupSize; i < end; ++i)
        scales[i] = dev::dq7_scale(dev::get_q7(q7, i), m);
    }
    return scales;
  }
  for (uint64_t g = 0; g < h.num_groups; ++g) {
    float step = get<float>(b, h.scales_offset + 4 * g);
    if (bad(step)) return error(Errc::kCorrupt, "nf4: negative or non-finite step");
    uint64_t end = std::min<uint64_t>(h.num_blocks, (g + 1) * kDqGroupSize);
    for (uint64_t i = g * kDqGroupSize; i < end; ++i) {
      auto q = get<int8_t>(b, h.q8_offset + i);
      scales[i] = dev::dq_scale(q, step, h.dq_offset);
      if (q == -128 || !std::isfinite(scales[i])) {
        return error(Errc::kCorrupt, "nf4: bad double-quant code");
      }
    }
  }
  return scales;
}

Status encode(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst) {
  return encode_impl(active(), p, src, dst);
}

Status decode(std::span<const std::byte> encoded, DType out_dtype, std::span<std::byte> dst) {
  return decode_impl(active(), encoded, out_dtype, dst);
}

const char* active_cpu_path() {
  return active().name;
}

Status encode_with(const char* path, const Params& p, std::span<const std::byte> src,
                   std::span<std::byte> dst) {
  const Impl* impl = by_name(path);
  if (impl == nullptr) return error(Errc::kUnavailable, std::string("nf4: no path ") + path);
  return encode_impl(*impl, p, src, dst);
}

Status decode_with(const char* path, std::span<const std::byte> encoded, DType out_dtype,
                   std::span<std::byte> dst) {
  const Impl* impl = by_name(path);
  if (impl == nullptr) return error(Errc::kUnavailable, std::string("nf4: no path ") + path);
  return decode_impl(*impl, encoded, out_dtype, dst);
}

}  // namespace kvtier::nf4
