// Outlier channels (Params::keep_outlier_channels, flag bit 1 of the format; docs/nf4.md):
// the few columns whose absmax dwarfs the median column's are stored exactly in the source
// dtype; the NF4 sections encode the tensor with those columns zeroed.  Shared by every CPU
// path and the reference, so they agree byte for byte.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

namespace kvtier::nf4 {
namespace {

Status corrupt(const char* what) {
  return error(Errc::kCorrupt, std::string("nf4: ") + what);
}

uint32_t col_at(std::span<const std::byte> encoded, const Header& h, uint32_t j) {
  uint32_t c;
  std::memcpy(&c, encoded.data() + h.outlier_cols_offset + 4 * uint64_t{j}, 4);
  return c;
}

}  // namespace

Status encode_outliers(const Params& p, std::span<const std::byte> src, std::span<std::byte> dst,
                       const EncodeFn& inner) {
  if (Status st = validate(p); !st) return st;
  const uint64_t rows = p.rows, cols = p.cols, n = rows * cols;
  const size_t esize = dtype_size(p.dtype);
  const uint8_t type = static_cast<uint8_t>(p.dtype);
  if (src.size() != n * esize || dst.size() < plan(p).total_size) {
    return error(Errc::kInvalidArgument, "nf4: source size wrong or destination too short");
  }
  // Column absmax (as keys: NaN and Inf sort above every finite value).
  std::vector<uint32_t> key(cols, 0);
  uint32_t worst = 0;
  for (uint64_t k = 0; k < n; ++k) {
    uint32_t x = dev::abs_key(src.data(), k, type);
    uint64_t c = k % cols;
    key[c] = std::max(key[c], x);
    worst = std::max(worst, x);
  }
  if (!dev::key_is_finite(worst, type)) {
    return error(Errc::kInvalidArgument, "nf4: input contains NaN or Inf");
  }
  std::vector<float> amax(cols);
  for (uint64_t c = 0; c < cols; ++c) amax[c] = dev::key_to_f32(key[c], type);
  // Median (the upper one for an even count), then the largest columns above ratio * median.
  std::vector<float> sorted = amax;
  std::nth_element(sorted.begin(), sorted.begin() + cols / 2, sorted.end());
  const float threshold = sorted[cols / 2] * p.outlier_ratio;
  std::vector<uint32_t> order(cols);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return amax[a] > amax[b]; });
  std::vector<uint32_t> chosen;
  for (uint32_t c : order) {
    if (chosen.size() == max_outliers(p) || !(amax[c] > threshold)) break;
    chosen.push_back(c);
  }
  std::sort(chosen.begin(), chosen.end());
  const auto m = static_cast<uint32_t>(chosen.size());

  // The NF4 part: the tensor with the chosen columns zeroed, encoded without outliers.
  std::vector<std::byte> zeroed(src.begin(), src.end());
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint32_t c : chosen) std::memset(zeroed.data() + (r * cols + c) * esize, 0, esize);
  }
  Params base = p;
  base.keep_outlier_channels = false;
  if (Status st = inner(base, zeroed, dst); !st) return st;

  Header h = plan(p, m);
  std::byte* out = dst.data();
  const uint64_t codes_end = plan(base).total_size;
  std::memset(out + codes_end, 0, h.outlier_vals_offset - codes_end);
  if (m > 0) std::memcpy(out + h.outlier_cols_offset, chosen.data(), 4 * uint64_t{m});
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint32_t j = 0; j < m; ++j) {
      std::memcpy(out + h.outlier_vals_offset + (r * m + j) * esize,
                  src.data() + (r * cols + chosen[j]) * esize, esize);
    }
  }
  // The inner encoder wrote the header of `base`; this one (and v1's dq_offset) replaces it.
  if (p.version == kVersion1) std::memcpy(&h.dq_offset, out + 40, 4);
  write_header(h, out);
  return Status::ok();
}

Status check_outlier_cols(const Header& h, std::span<const std::byte> encoded) {
  for (uint32_t j = 0; j < h.num_outliers; ++j) {
    uint32_t c = col_at(encoded, h, j);
    if (c >= h.params.cols || (j > 0 && c <= col_at(encoded, h, j - 1))) {
      return corrupt("outlier channels not ascending or out of range");
    }
  }
  return Status::ok();
}

Status restore_outliers(const Header& h, std::span<const std::byte> encoded, DType out_dtype,
                        std::span<std::byte> dst) {
  const uint64_t rows = h.params.rows, cols = h.params.cols, m = h.num_outliers;
  const auto in_type = static_cast<uint8_t>(h.params.dtype);
  const auto out_type = static_cast<uint8_t>(out_dtype);
  const std::byte* vals = encoded.data() + h.outlier_vals_offset;
  for (uint32_t j = 0; j < m; ++j) {
    const uint32_t c = col_at(encoded, h, j);
    for (uint64_t r = 0; r < rows; ++r) {
      float v = dev::load_elem(vals, r * m + j, in_type);
      if (!std::isfinite(v)) return corrupt("non-finite outlier value");
      dev::store_elem(dst.data(), r * cols + c, out_type, v);
    }
  }
  return Status::ok();
}

}  // namespace kvtier::nf4
