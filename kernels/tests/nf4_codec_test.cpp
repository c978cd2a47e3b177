// Round trips, error bounds, shapes, dtypes, layouts, double quant, bad input and headers.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/nf4.h"
#include "kernels/nf4_device.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

double mean_abs_error(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += std::fabs(static_cast<double>(a[i]) - b[i]);
  return sum / static_cast<double>(a.size());
}

TEST_CASE("nf4 fp16/bf16 conversions are exact and round to nearest even", "[nf4]") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    _Float16 f;
    uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&f, &bits, 2);
    float want = static_cast<float>(f);
    float got = dev::f16_to_f32(bits);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
      continue;
    }
    REQUIRE(std::memcmp(&want, &got, 4) == 0);
    REQUIRE(dev::f32_to_f16(got) == bits);  // exact values survive the trip back
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    float x;
    std::memcpy(&x, &u, 4);
    if (std::isnan(x)) continue;
    _Float16 h = static_cast<_Float16>(x);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    REQUIRE(dev::f32_to_f16(x) == want);
  }
  CHECK(dev::f32_to_bf16(1.0f) == 0x3F80);
  CHECK(dev::f32_to_bf16(std::nextafter(1.0f, 2.0f)) == 0x3F80);
  CHECK(dev::f32_to_bf16(1.00390625f) == 0x3F80);  // halfway, even stays
  CHECK(dev::f32_to_bf16(1.01171875f) == 0x3F82);  // halfway, odd rounds up
  CHECK(dev::f32_to_f16(65519.0f) == 0x7BFF);
  CHECK(dev::f32_to_f16(65520.0f) == 0x7C00);
}

TEST_CASE("nf4 round trip on 1024x1024 N(0,1): mean absolute error below 0.0734", "[nf4]") {
  std::vector<float> v = testing::normal(1024, 1024, 42);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    Bytes src = testing::to_dtype(v, dt);
    std::vector<float> orig = testing::from_dtype(src, dt);
    Params p{dt, Nf4Layout::kRowBlocks, false, 1024, 1024};
    Bytes enc = testing::encode_ok(p, src);
    CHECK(enc.size() == 32 + 16384 * 4 + 512 * 1024);
    std::vector<float> back = testing::from_dtype(testing::decode_ok(enc, dt), dt);
    double mae = mean_abs_error(orig, back);
    INFO(dtype_name(dt) << " mae " << mae);
    CHECK(mae < 0.0734);
    CHECK(mae > 0.05);  // it is 4-bit: a much smaller error means the test is broken
    p.double_quant = true;
    Bytes dq = testing::encode_ok(p, src);
    CHECK(dq.size() == 32 + 64 * 4 + 16384 * 7 / 8 + 512 * 1024);  // 4.111 bits per value
    double mae_dq = mean_abs_error(orig, testing::from_dtype(testing::decode_ok(dq, dt), dt));
    INFO("double quant mae " << mae_dq);
    CHECK(mae_dq < 0.0734);
    p.version = kVersion1;
    Bytes dq1 = testing::encode_ok(p, src);
    CHECK(dq1.size() == 64 + 64 * 4 + 16384 + 512 * 1024);
    double mae_dq1 = mean_abs_error(orig, testing::from_dtype(testing::decode_ok(dq1, dt), dt));
    INFO("v1 double quant mae " << mae_dq1);
    CHECK(mae_dq1 < 0.0734);
  }
}

TEST_CASE("nf4 per-channel keys beat per-token on outlier channels", "[nf4]") {
  std::vector<float> v = testing::normal(256, 128, 3, {5, 77, 100}, 16.0f);
  Bytes src = testing::to_dtype(v, DType::kF16);
  std::vector<float> orig = testing::from_dtype(src, DType::kF16);
  double err[2];
  for (int l = 0; l < 2; ++l) {
    Params p{DType::kF16, static_cast<Nf4Layout>(l), false, 256, 128};
    Bytes enc = testing::encode_ok(p, src);
    err[l] = mean_abs_error(orig,
                            testing::from_dtype(testing::decode_ok(enc, DType::kF16), DType::kF16));
  }
  INFO("per-token " << err[0] << " per-channel " << err[1]);
  CHECK(err[1] < 0.5 * err[0]);
}

TEST_CASE("nf4 odd shapes and partial blocks decode within the block error bound", "[nf4]") {
  const uint64_t shapes[][2] = {{1, 1},  {1, 63},    {1, 65},  {3, 7},
                                {65, 3}, {130, 129}, {64, 64}, {7, 200}};
  for (auto [rows, cols] : shapes) {
    for (int l = 0; l < 2; ++l) {
      for (bool dq : {false, true}) {
        Params p{DType::kF32, static_cast<Nf4Layout>(l), dq, rows, cols};
        std::vector<float> v =
            testing::normal(rows, cols, static_cast<uint32_t>(rows * 1000 + cols));
        Bytes enc = testing::encode_ok(p, testing::to_dtype(v, DType::kF32));
        Result<Header> h = parse_header(enc);
        REQUIRE(h.is_ok());
        CHECK(h->total_size == enc.size());
        std::vector<float> back =
            testing::from_dtype(testing::decode_ok(enc, DType::kF32), DType::kF32);
        // The largest gap in the codebook is 0.3038 (between -1 and -0.6962), so no value is
        // off by more than 0.152 of its block's absmax, plus double quant's error in absmax.
        float amax = 0;
        for (float x : v) amax = std::max(amax, std::fabs(x));
        for (size_t i = 0; i < v.size(); ++i) {
          INFO(testing::describe(p) << " element " << i);
          REQUIRE(std::fabs(v[i] - back[i]) <= 0.152f * amax + (dq ? 0.05f : 0.0f));
        }
      }
    }
  }
}

TEST_CASE("nf4 decode into another float dtype", "[nf4]") {
  std::vector<float> v = testing::normal(16, 64, 9);
  Bytes enc = testing::encode_ok({DType::kBF16, Nf4Layout::kRowBlocks, false, 16, 64},
                                 testing::to_dtype(v, DType::kBF16));
  std::vector<float> f32 = testing::from_dtype(testing::decode_ok(enc, DType::kF32), DType::kF32);
  Bytes f16 = testing::decode_ok(enc, DType::kF16);
  CHECK(f16 == testing::to_dtype(f32, DType::kF16));  // f32 result rounded once
  Result<Header> h = parse_header(enc);
  REQUIRE(h.is_ok());
  CHECK(h->params.dtype == DType::kBF16);
  Bytes out(16 * 64);
  CHECK(decode(enc, DType::kU8, out).code() == Errc::kInvalidArgument);
}

TEST_CASE("nf4 NaN and Inf inputs are rejected with a clear error", "[nf4]") {
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (float b : bad) {
      for (int l = 0; l < 2; ++l) {
        std::vector<float> v = testing::normal(70, 72, 1);
        v[69 * 72 + 71] = b;  // in the final (partial) block
        Params p{dt, static_cast<Nf4Layout>(l), l == 1, 70, 72};
        Bytes src = testing::to_dtype(v, dt);
        Bytes dst(encoded_size(p), std::byte{0x5A});
        Status st = encode(p, src, dst);
        CHECK(st.code() == Errc::kInvalidArgument);
        CHECK(st.message().find("NaN or Inf") != std::string::npos);
        CHECK(!parse_header(dst).is_ok());  // never a readable encoding
      }
    }
  }
}

TEST_CASE("nf4 fp32 extremes: values near FLT_MAX, blocks below 2^-126", "[nf4]") {
  std::vector<float> v(128, 3.0e38f);
  v[64] = -3.4e38f;
  Bytes src = testing::to_dtype(v, DType::kF32);
  Params p{DType::kF32, Nf4Layout::kRowBlocks, false, 1, 128};
  Bytes enc = testing::encode_ok(p, src);
  CHECK(testing::from_dtype(testing::decode_ok(enc, DType::kF32), DType::kF32)[64] == -3.4e38f);
  // Tiny fp32 blocks (below 2^-126) are stored as zero blocks.
  std::vector<float> tiny(64, 1e-39f);
  Bytes t = testing::encode_ok(p = {DType::kF32, Nf4Layout::kRowBlocks, false, 1, 64},
                               testing::to_dtype(tiny, DType::kF32));
  CHECK(testing::from_dtype(testing::decode_ok(t, DType::kF32), DType::kF32) ==
        std::vector<float>(64, 0.0f));
}

TEST_CASE("nf4 parse_header rejects corrupt v2 encodings", "[nf4]") {
  Params p{DType::kF16, Nf4Layout::kColumnBlocks, true, 100, 64};
  Bytes enc = testing::encode_ok(p, testing::to_dtype(testing::normal(100, 64, 5), DType::kF16));
  REQUIRE(parse_header(enc).is_ok());
  CHECK(parse_header(enc)->codes_offset == 160);  // 32 + 4 (1 group) + 112 (128 x 7 bits) + 12
  auto corrupt = [&](size_t at, uint8_t value) {
    Bytes b = enc;
    b[at] = static_cast<std::byte>(value);
    return parse_header(b).status().code();
  };
  CHECK(corrupt(0, 'X') == Errc::kCorrupt);   // magic
  CHECK(corrupt(4, 3) == Errc::kCorrupt);     // version
  CHECK(corrupt(6, 0) == Errc::kCorrupt);     // dtype u8
  CHECK(corrupt(7, 7) == Errc::kCorrupt);     // layout
  CHECK(corrupt(8, 5) == Errc::kCorrupt);     // unknown flag (bit 2)
  CHECK(corrupt(9, 1) == Errc::kCorrupt);     // reserved
  CHECK(corrupt(11, 1) == Errc::kCorrupt);    // reserved
  CHECK(corrupt(12, 1) == Errc::kCorrupt);    // outlier count without the flag
  CHECK(corrupt(16, 101) == Errc::kCorrupt);  // rows no longer fit the buffer
  Bytes short_buf(enc.begin(), enc.end() - 1);
  CHECK(parse_header(short_buf).status().code() == Errc::kCorrupt);
  CHECK(parse_header(Bytes(10)).status().code() == Errc::kCorrupt);
  Bytes out(100 * 64 * 2);
  for (float m : {-1.0f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    Bytes bad = enc;
    std::memcpy(bad.data() + 32, &m, 4);  // the first group's maximum
    CHECK(decode(bad, DType::kF16, out).code() == Errc::kCorrupt);
  }
}

TEST_CASE("nf4 parse_header rejects corrupt v1 encodings", "[nf4]") {
  Params p{DType::kF16, Nf4Layout::kColumnBlocks, true, 100, 64};
  p.version = kVersion1;
  Bytes enc = testing::encode_ok(p, testing::to_dtype(testing::normal(100, 64, 5), DType::kF16));
  REQUIRE(parse_header(enc).is_ok());
  auto corrupt = [&](size_t at, uint8_t value) {
    Bytes b = enc;
    b[at] = static_cast<std::byte>(value);
    return parse_header(b).status().code();
  };
  CHECK(corrupt(0, 'X') == Errc::kCorrupt);   // magic
  CHECK(corrupt(4, 3) == Errc::kCorrupt);     // version
  CHECK(corrupt(8, 0) == Errc::kCorrupt);     // dtype u8
  CHECK(corrupt(9, 7) == Errc::kCorrupt);     // layout
  CHECK(corrupt(10, 5) == Errc::kCorrupt);    // unknown flag (bit 2)
  CHECK(corrupt(44, 1) == Errc::kCorrupt);    // outlier count without the flag
  CHECK(corrupt(16, 101) == Errc::kCorrupt);  // rows no longer match the sizes
  CHECK(corrupt(60, 1) == Errc::kCorrupt);    // reserved
  Bytes short_buf(enc.begin(), enc.end() - 1);
  CHECK(parse_header(short_buf).status().code() == Errc::kCorrupt);
  CHECK(parse_header(Bytes(10)).status().code() == Errc::kCorrupt);
  Bytes bad_q8 = enc;
  bad_q8[parse_header(enc)->q8_offset] = std::byte{0x80};  // -128 is never written
  Bytes out(100 * 64 * 2);
  CHECK(decode(bad_q8, DType::kF16, out).code() == Errc::kCorrupt);
}

TEST_CASE("nf4 argument checks", "[nf4]") {
  Params p{DType::kF16, Nf4Layout::kRowBlocks, false, 4, 64};
  Params v1 = p, bad_version = p;
  v1.version = kVersion1;
  bad_version.version = 3;
  CHECK(encoded_size(p) == 32 + 4 * 4 + 128);
  CHECK(encoded_size(v1) == 64 + 4 * 4 + 128);
  CHECK(encoded_size(bad_version) == 0);
  Bytes src(4 * 64 * 2), dst(encoded_size(p));
  CHECK(encode(p, std::span(src).first(10), dst).code() == Errc::kInvalidArgument);
  CHECK(encode(p, src, std::span(dst).first(dst.size() - 1)).code() == Errc::kInvalidArgument);
  CHECK(encoded_size({DType::kI32, Nf4Layout::kRowBlocks, false, 4, 64}) == 0);
  CHECK(encoded_size({DType::kF16, Nf4Layout::kRowBlocks, false, 0, 64}) == 0);
  CHECK(encoded_size({DType::kF16, static_cast<Nf4Layout>(9), false, 4, 64}) == 0);
  CHECK(encoded_size({DType::kF16, Nf4Layout::kRowBlocks, false, uint64_t{1} << 40,
                      uint64_t{1} << 40}) == 0);
  REQUIRE(encode(p, src, dst).is_ok());
  Bytes out(4 * 64 * 2);
  CHECK(decode(dst, DType::kF16, std::span(out).first(out.size() - 1)).code() ==
        Errc::kInvalidArgument);
  CHECK(std::string(active_cpu_path()) ==
        (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq")
             ? "avx512"
         : __builtin_cpu_supports("avx2") ? "avx2+f16c"
                                          : "scalar"));
}

}  // namespace
}  // namespace kvtier::nf4
