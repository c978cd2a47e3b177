// Outlier channels (Params::keep_outlier_channels, flag bit 1): selection, the byte layout,
// agreement of every CPU path with the reference, and rejection of corrupt encodings.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

Params with_outliers(DType dt, Nf4Layout layout, bool dq, uint64_t rows, uint64_t cols) {
  Params p{dt, layout, dq, rows, cols};
  p.keep_outlier_channels = true;
  return p;
}

template <typename T>
T read(const Bytes& b, uint64_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

std::vector<uint32_t> outlier_cols(const Bytes& enc) {
  Result<Header> h = parse_header(enc);
  REQUIRE(h.is_ok());
  std::vector<uint32_t> cols(h->num_outliers);
  for (uint32_t j = 0; j < h->num_outliers; ++j) {
    cols[j] = read<uint32_t>(enc, h->outlier_cols_offset + 4 * j);
  }
  return cols;
}

TEST_CASE("nf4 outliers: layout, exact channels, NF4 part equals the zeroed tensor's", "[nf4]") {
  // 3 x 32 fp32: columns 5 (x100) and 17 (x-40) stand out; cols / 16 = 2 may be kept.
  std::vector<float> v = testing::normal(3, 32, 7);
  for (int r = 0; r < 3; ++r) {
    v[r * 32 + 5] *= 100.0f;
    v[r * 32 + 17] *= -40.0f;
  }
  Params p = with_outliers(DType::kF32, Nf4Layout::kColumnBlocks, false, 3, 32);
  Bytes src = testing::to_dtype(v, DType::kF32);
  Bytes enc = testing::encode_ok(p, src);
  Result<Header> h = parse_header(enc);
  REQUIRE(h.is_ok());
  CHECK(read<uint8_t>(enc, 8) == 2);     // flags: outliers, no double quant
  CHECK(read<uint32_t>(enc, 12) == 2);   // outlier count
  CHECK(h->outlier_cols_offset == 208);  // codes at 32 + 4 * 32 = 160, 48 bytes
  CHECK(h->outlier_vals_offset == 224);  // 2 column indices, padded to 16
  CHECK(h->total_size == 224 + 3 * 2 * 4);
  CHECK(encoded_size(p) == 224 + 3 * 2 * 4);  // bound: cols / 16 = 2 channels
  CHECK(outlier_cols(enc) == std::vector<uint32_t>{5, 17});
  for (int r = 0; r < 3; ++r) {
    CHECK(read<float>(enc, 224 + 8 * r) == v[r * 32 + 5]);
    CHECK(read<float>(enc, 224 + 8 * r + 4) == v[r * 32 + 17]);
  }
  // Everything before the outlier sections is the reference encoding of the zeroed tensor.
  std::vector<float> z = v;
  for (int r = 0; r < 3; ++r) z[r * 32 + 5] = z[r * 32 + 17] = 0.0f;
  Params base{DType::kF32, Nf4Layout::kColumnBlocks, false, 3, 32};
  Bytes zenc(encoded_size(base));
  REQUIRE(reference::encode(base, testing::to_dtype(z, DType::kF32), zenc).is_ok());
  CHECK(std::equal(zenc.begin() + 32, zenc.end(), enc.begin() + 32));
  CHECK(std::all_of(enc.begin() + 216, enc.begin() + 224,
                    [](std::byte b) { return b == std::byte{0}; }));
  // Decoding: the outlier channels exactly, the rest as the zeroed tensor decodes.
  std::vector<float> got = testing::from_dtype(testing::decode_ok(enc, DType::kF32), DType::kF32);
  std::vector<float> want = testing::from_dtype(testing::decode_ok(zenc, DType::kF32), DType::kF32);
  for (int r = 0; r < 3; ++r) {
    want[r * 32 + 5] = v[r * 32 + 5];
    want[r * 32 + 17] = v[r * 32 + 17];
  }
  CHECK(got == want);
}

TEST_CASE("nf4 outliers: selection threshold and cap", "[nf4]") {
  std::vector<float> v = testing::normal(64, 64, 3);  // no outliers: nothing kept
  Params p = with_outliers(DType::kF16, Nf4Layout::kRowBlocks, false, 64, 64);
  CHECK(outlier_cols(testing::encode_ok(p, testing::to_dtype(v, DType::kF16))).empty());
  // Six columns above 4x the median, cap 64 / 16 = 4: the four largest are kept.
  const float scale[6] = {9, 30, 12, 50, 20, 7};
  const uint32_t col[6] = {60, 2, 33, 9, 41, 0};
  for (int r = 0; r < 64; ++r) {
    for (int j = 0; j < 6; ++j) v[r * 64 + col[j]] = scale[j] * (r % 2 ? 1.0f : -1.0f);
  }
  Bytes enc = testing::encode_ok(p, testing::to_dtype(v, DType::kF16));
  CHECK(outlier_cols(enc) == std::vector<uint32_t>{2, 9, 33, 41});
  p.outlier_ratio = 15.0f;  // median column absmax ~2.4: only column 9 (50) exceeds 15x
  CHECK(outlier_cols(testing::encode_ok(p, testing::to_dtype(v, DType::kF16))) ==
        std::vector<uint32_t>{9});
  // Ratio 0 and a limit: the N largest channels, whatever the median (namespaces' setting).
  p.outlier_ratio = 0.0f;
  p.max_outlier_channels = 2;
  CHECK(encoded_size(p) < encoded_size(Params{p.dtype, p.layout, false, 64, 64, true}));
  CHECK(outlier_cols(testing::encode_ok(p, testing::to_dtype(v, DType::kF16))) ==
        std::vector<uint32_t>{2, 9});
  p.outlier_ratio = -1.0f;
  Bytes out(encoded_size(Params{DType::kF16, Nf4Layout::kRowBlocks, false, 64, 64}) + 1024);
  CHECK(encode(p, testing::to_dtype(v, DType::kF16), out).code() == Errc::kInvalidArgument);
}

TEST_CASE("nf4 outliers: every CPU path equals the reference on odd shapes", "[nf4][paths]") {
  std::vector<const char*> paths = {"scalar"};
  if (avx2::supported()) paths.push_back("avx2");
  if (avx512::supported()) paths.push_back("avx512");
  const uint64_t shapes[][2] = {{1, 16}, {67, 24}, {130, 128}, {5, 8}, {9, 63}, {33, 160}};
  uint32_t seed = 100;
  for (auto [rows, cols] : shapes) {
    for (DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
      for (int l = 0; l < 2; ++l) {
        for (bool dq : {false, true}) {
          Params p = with_outliers(dt, static_cast<Nf4Layout>(l), dq, rows, cols);
          std::vector<float> v = testing::normal(rows, cols, ++seed, {cols / 3, cols - 1}, 30.0f);
          Bytes src = testing::to_dtype(v, dt);
          Bytes ref(encoded_size(p));
          REQUIRE(reference::encode(p, src, ref).is_ok());
          ref.resize(parse_header(ref)->total_size);  // exact size from the header
          INFO(testing::describe(p));
          CHECK(outlier_cols(ref).size() == std::min<uint64_t>(cols / 16, 2));
          for (const char* path : paths) {
            INFO("path " << path);
            Bytes enc(encoded_size(p), std::byte{0xCD});
            REQUIRE(encode_with(path, p, src, enc).is_ok());
            enc.resize(ref.size());
            REQUIRE(enc == ref);
            for (DType out : {DType::kF16, DType::kF32}) {
              Bytes want(rows * cols * dtype_size(out)), got(want.size());
              REQUIRE(reference::decode(ref, out, want).is_ok());
              REQUIRE(decode_with(path, ref, out, got).is_ok());
              REQUIRE(got == want);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("nf4 outliers: NaN/Inf rejected, corrupt sections detected", "[nf4]") {
  const uint16_t version = GENERATE(kVersion1, kVersion);
  const uint64_t count_at = version == kVersion1 ? 44 : 12;
  Params p = with_outliers(DType::kF16, Nf4Layout::kColumnBlocks, false, 10, 48);
  p.version = version;
  std::vector<float> v = testing::normal(10, 48, 9, {4, 30}, 25.0f);
  Bytes out(encoded_size(p));
  for (float bad : {NAN, INFINITY}) {
    std::vector<float> w = v;
    w[4 * 48 + 30] = bad;  // in an outlier channel
    CHECK(encode(p, testing::to_dtype(w, DType::kF16), out).code() == Errc::kInvalidArgument);
  }
  Bytes enc = testing::encode_ok(p, testing::to_dtype(v, DType::kF16));
  Result<Header> h = parse_header(enc);
  REQUIRE(h.is_ok());
  REQUIRE(h->num_outliers == 2);
  enc.resize(h->total_size);
  Bytes dst(10 * 48 * 2);
  auto code_of = [&](auto mutate) {
    Bytes b = enc;
    mutate(b);
    Status st = parse_header(b).status();
    return st ? decode(b, DType::kF16, dst).code() : st.code();
  };
  auto put32 = [](Bytes& b, uint64_t off, uint32_t x) { std::memcpy(b.data() + off, &x, 4); };
  const uint64_t cols_at = h->outlier_cols_offset, vals_at = h->outlier_vals_offset;
  CHECK(code_of([&](Bytes& b) { put32(b, cols_at, 30); }) == Errc::kCorrupt);      // not ascending
  CHECK(code_of([&](Bytes& b) { put32(b, cols_at + 4, 48); }) == Errc::kCorrupt);  // out of range
  CHECK(code_of([&](Bytes& b) { put32(b, count_at, 4); }) == Errc::kCorrupt);      // > cols / 16
  CHECK(code_of([&](Bytes& b) { put32(b, count_at, 3); }) == Errc::kCorrupt);      // truncated
  if (version == kVersion1) {  // v1 stores its total size; v2 leaves that to the checksums
    CHECK(code_of([&](Bytes& b) { put32(b, count_at, 1); }) == Errc::kCorrupt);
  }
  CHECK(code_of([&](Bytes& b) { b[vals_at + 1] = std::byte{0x7C}; }) == Errc::kCorrupt);  // Inf
  CHECK(code_of([&](Bytes& b) { b.pop_back(); }) == Errc::kCorrupt);  // truncated
  CHECK(code_of([](Bytes&) {}) == Errc::kOk);
}

}  // namespace
}  // namespace kvtier::nf4
