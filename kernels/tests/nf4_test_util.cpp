#include "kernels/tests/nf4_test_util.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>

#include "kernels/nf4_device.h"

namespace kvtier::nf4::testing {

Bytes to_dtype(const std::vector<float>& values, DType dtype) {
  Bytes out(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    dev::store_elem(out.data(), i, static_cast<uint8_t>(dtype), values[i]);
  }
  return out;
}

std::vector<float> from_dtype(const Bytes& raw, DType dtype) {
  std::vector<float> out(raw.size() / dtype_size(dtype));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = dev::load_elem(raw.data(), i, static_cast<uint8_t>(dtype));
  }
  return out;
}

std::vector<float> normal(uint64_t rows, uint64_t cols, uint32_t seed,
                          std::vector<uint64_t> outlier_cols, float outlier_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(rows * cols);
  for (float& x : v) x = dist(rng);
  for (uint64_t c : outlier_cols) {
    for (uint64_t r = 0; r < rows; ++r) v[r * cols + c] *= outlier_scale;
  }
  return v;
}

std::vector<float> tricky(uint64_t n, uint32_t seed) {
  constexpr float kMid[15] = KVTIER_NF4_MIDPOINTS;
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (uint64_t i = 0; i < n; ++i) {
    float scale = std::ldexp(1.0f, static_cast<int>(rng() % 16) - 8);
    switch (rng() % 8) {
      case 0:
        v[i] = kMid[rng() % 15] * scale;
        break;
      case 1:
        v[i] = std::nextafter(kMid[rng() % 15], 2.0f) * scale;
        break;
      case 2:
        v[i] = std::nextafter(kMid[rng() % 15], -2.0f) * scale;
        break;
      case 3:
        v[i] = rng() % 2 ? scale : -scale;
        break;
      case 4:
        v[i] = 0.0f;
        break;
      case 5:
        v[i] = std::ldexp(1.0f, -20 - static_cast<int>(rng() % 6));
        break;  // fp16 subnormal
      default:
        v[i] = std::normal_distribution<float>(0.0f, scale)(rng);
        break;
    }
  }
  return v;
}

Bytes encode_ok(const Params& p, const Bytes& src) {
  Bytes out(encoded_size(p));
  Status st = encode(p, src, out);
  INFO(describe(p) << ": " << st.to_string());
  REQUIRE(st.is_ok());
  return out;
}

Bytes decode_ok(const Bytes& encoded, DType out) {
  Result<Header> h = parse_header(encoded);
  REQUIRE(h.is_ok());
  Bytes dst(h->params.rows * h->params.cols * dtype_size(out));
  Status st = decode(encoded, out, dst);
  INFO(st.to_string());
  REQUIRE(st.is_ok());
  return dst;
}

std::string describe(const Params& p) {
  return std::string(dtype_name(p.dtype)) + " " + std::to_string(p.rows) + "x" +
         std::to_string(p.cols) +
         (p.layout == Nf4Layout::kColumnBlocks ? " per-channel" : " per-token") +
         (p.double_quant ? " dq" : "") + " v" + std::to_string(p.version);
}

}  // namespace kvtier::nf4::testing
