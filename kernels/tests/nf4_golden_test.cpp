// Golden encodings written down by hand from the codebook and docs/nf4.md, not produced by
// the code under test.  Codebook:
//   0 -1.0        4 -0.2844   8 0.0796   12 0.4407
//   1 -0.6962     5 -0.1848   9 0.1609   13 0.5626
//   2 -0.5251     6 -0.0911  10 0.2461   14 0.7230
//   3 -0.3949     7  0.0     11 0.3379   15 1.0
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <initializer_list>

#include "kernels/nf4.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

Bytes bytes(std::initializer_list<int> v) {
  Bytes out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

Bytes f32s(std::initializer_list<float> v) {
  Bytes out(v.size() * 4);
  std::memcpy(out.data(), v.begin(), out.size());
  return out;
}

// Header bytes per docs/nf4.md for the given fields.
Bytes header(int dtype, int layout, int flags, int dq_group, uint64_t rows, uint64_t cols,
             uint64_t blocks, Bytes dq_offset, uint64_t total) {
  Bytes h = bytes({'K', 'V', 'N', '4', 1, 0, 64, 0, dtype, layout, flags, 64, dq_group & 255,
                   dq_group >> 8, 0, 0});
  for (uint64_t v : {rows, cols, blocks}) {
    for (int i = 0; i < 8; ++i) h.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  h.insert(h.end(), dq_offset.begin(), dq_offset.end());
  for (int i = 0; i < 4; ++i) h.push_back(std::byte{0});
  for (int i = 0; i < 8; ++i) h.push_back(static_cast<std::byte>(total >> (8 * i)));
  for (int i = 0; i < 8; ++i) h.push_back(std::byte{0});
  return h;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes zeros(size_t n) {
  return Bytes(n);
}

Params v1(Params p) {
  p.version = kVersion1;
  return p;
}

// Format v2 header bytes per docs/nf4.md.
Bytes header_v2(int dtype, int layout, int flags, uint64_t rows, uint64_t cols) {
  Bytes h = bytes({'K', 'V', 'N', '4', 2, 0, dtype, layout, flags, 0, 0, 0, 0, 0, 0, 0});
  for (uint64_t v : {rows, cols}) {
    for (int i = 0; i < 8; ++i) h.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  return h;
}

void check_all_paths(const Params& p, const Bytes& src, const Bytes& want) {
  Bytes ref(want.size()), fast(want.size()), sc(want.size());
  REQUIRE(encoded_size(p) == want.size());
  REQUIRE(reference::encode(p, src, ref).is_ok());
  CHECK(ref == want);
  REQUIRE(encode(p, src, fast).is_ok());
  CHECK(fast == want);
  REQUIRE(encode_with("scalar", p, src, sc).is_ok());
  CHECK(sc == want);
}

TEST_CASE("nf4 golden: midpoints, ties to the lower code, fp32 row blocks", "[nf4][golden]") {
  const float mid78 = 0.03979014977812767f;    // threshold between codes 7 and 8
  const float mid67 = -0.045525018125772476f;  // threshold between codes 6 and 7
  const float mid1415 = 0.8614784181118011f;   // threshold between codes 14 and 15
  Bytes src = f32s({1.0f, 0.0f, -1.0f, 0.5f, -0.5f, mid78, std::nextafter(mid78, 1.0f), mid67,
                    mid1415, 0.9f, 0.25f, -0.25f, 0.1f, -0.1f, 0.75f, -0.75f});
  // absmax 1, so t = x.  Codes: 15 7 0 12 2 7 8 6 14 15 10 4 8 6 14 1.
  Bytes want = cat({header(3, 0, 0, 0, 1, 16, 1, zeros(4), 88), f32s({1.0f}), zeros(12),
                    bytes({0xF7, 0x0C, 0x27, 0x86, 0xEF, 0xA4, 0x86, 0xE1})});
  check_all_paths(v1({DType::kF32, Nf4Layout::kRowBlocks, false, 1, 16}), src, want);
}

TEST_CASE("nf4 golden: fp16, odd count pads the last low nibble with code 7", "[nf4][golden]") {
  Bytes src = bytes({0x00, 0x40, 0x00, 0xBC, 0x00, 0x00});  // 2.0, -1.0, 0.0
  // absmax 2: t = 1, -0.5, 0 -> codes 15, 2, 7; padding code 7 (bitsandbytes' 0.0).
  Bytes v2 = cat({header_v2(1, 0, 0, 1, 3), f32s({2.0f}), zeros(12), bytes({0xF2, 0x77})});
  check_all_paths({DType::kF16, Nf4Layout::kRowBlocks, false, 1, 3}, src, v2);
  Bytes want = cat(
      {header(1, 0, 0, 0, 1, 3, 1, zeros(4), 82), f32s({2.0f}), zeros(12), bytes({0xF2, 0x77})});
  check_all_paths(v1({DType::kF16, Nf4Layout::kRowBlocks, false, 1, 3}), src, want);
}

TEST_CASE("nf4 golden: per-channel and per-token blocks of the same tensor", "[nf4][golden]") {
  Bytes src = f32s({1.0f, -4.0f, 0.5f, 2.0f});  // [[1, -4], [0.5, 2]]
  // Per channel: column absmax 1 and 4; t = 1, -1, 0.5, 0.5 -> 15 0 12 12.
  Bytes cols = cat({header(3, 1, 0, 0, 2, 2, 2, zeros(4), 82), f32s({1.0f, 4.0f}), zeros(8),
                    bytes({0xF0, 0xCC})});
  check_all_paths(v1({DType::kF32, Nf4Layout::kColumnBlocks, false, 2, 2}), src, cols);
  // Per token (one block, absmax 4): t = 0.25, -1, 0.125, 0.5 -> 10 0 9 12.
  Bytes rows = cat(
      {header(3, 0, 0, 0, 2, 2, 1, zeros(4), 82), f32s({4.0f}), zeros(12), bytes({0xA0, 0x9C})});
  check_all_paths(v1({DType::kF32, Nf4Layout::kRowBlocks, false, 2, 2}), src, rows);
}

TEST_CASE("nf4 golden: all-zero block stores absmax 0 and code 7", "[nf4][golden]") {
  Bytes src = zeros(2 * 5);
  Bytes want = cat({header(2, 0, 0, 0, 1, 5, 1, zeros(4), 83), f32s({0.0f}), zeros(12),
                    bytes({0x77, 0x77, 0x77})});
  check_all_paths(v1({DType::kBF16, Nf4Layout::kRowBlocks, false, 1, 5}), src, want);
  Bytes out(10, std::byte{0xAA});
  REQUIRE(decode(want, DType::kF16, out).is_ok());
  CHECK(out == zeros(10));  // +0.0, not -0.0
}

TEST_CASE("nf4 golden: double quantization", "[nf4][golden]") {
  // Two blocks with absmax 1 and 255: offset 128, deviations -127/+127, step exactly 1,
  // codes -127 (0x81) and 127 (0x7F); read back exactly 1 and 255.
  std::vector<float> v(128, 0.0f);
  v[0] = 1.0f;
  v[64] = 255.0f;
  v[65] = -127.5f;  // t = -0.5 -> code 2
  Bytes src = testing::to_dtype(v, DType::kF32);
  Bytes codes(64, std::byte{0x77});
  codes[0] = std::byte{0xF7};
  codes[32] = std::byte{0xF2};
  Bytes want = cat({header(3, 0, 1, 256, 1, 128, 2, f32s({128.0f}), 144), f32s({1.0f}),
                    bytes({0x81, 0x7F}), zeros(10), codes});
  check_all_paths(v1({DType::kF32, Nf4Layout::kRowBlocks, true, 1, 128}), src, want);
}

TEST_CASE("nf4 golden: v2 double quantization, 7-bit log-domain codes", "[nf4][golden]") {
  // Four blocks with absmax 8, 4, 0, 3: group maximum 8; codes (nearest 16 * -log2(a / 8)):
  // 0, 16, 127 (zero), 23 (22.64); read back 8, 4, 0, 8 * 2^(-23/16) = 2.952.
  // Packed LSB first, 7 bits each: 0 | 16 << 7 | 127 << 14 | 23 << 21 = 00 C8 FF 02.
  std::vector<float> v(256, 0.0f);
  v[0] = 8.0f;
  v[64] = 4.0f;
  v[65] = -2.0f;   // t = -0.5 -> code 2
  v[192] = 3.0f;   // t = 1.016 -> code 15
  v[193] = -1.5f;  // t = -0.508 -> code 2
  Bytes src = testing::to_dtype(v, DType::kF32);
  Bytes codes(128, std::byte{0x77});
  codes[0] = std::byte{0xF7};
  codes[32] = std::byte{0xF2};
  codes[96] = std::byte{0xF2};
  Bytes want = cat(
      {header_v2(3, 0, 1, 1, 256), f32s({8.0f}), bytes({0x00, 0xC8, 0xFF, 0x02}), zeros(8), codes});
  check_all_paths({DType::kF32, Nf4Layout::kRowBlocks, true, 1, 256}, src, want);
  Bytes out(256 * 4);
  REQUIRE(decode(want, DType::kF32, out).is_ok());
  std::vector<float> back = testing::from_dtype(out, DType::kF32);
  CHECK(back[64] == 4.0f);
  CHECK(back[128] == 0.0f);
  CHECK(back[192] == Approx(8.0 * std::exp2(-23.0 / 16.0)).epsilon(1e-6));
}

TEST_CASE("nf4 golden: decode is code * absmax rounded to the output type", "[nf4][golden]") {
  Bytes enc = cat({header(1, 0, 0, 0, 1, 4, 1, zeros(4), 82), f32s({2.0f}), zeros(12),
                   bytes({0x07, 0xF8})});  // codes 0 7 15 8
  Bytes f16(8), bf16(8), f32(16);
  REQUIRE(decode(enc, DType::kF16, f16).is_ok());
  // -2.0, 0, 2.0, 0.0796*2 = 0.15916 -> 2^-3 * (1 + 280/1024) -> 0x3118.
  CHECK(f16 == bytes({0x00, 0xC0, 0x00, 0x00, 0x00, 0x40, 0x18, 0x31}));
  REQUIRE(decode(enc, DType::kBF16, bf16).is_ok());
  // bf16 0.15916: 2^-3 * (1 + 35/128) = 0.1591797 (nearest) -> 0x3E23.
  CHECK(bf16 == bytes({0x00, 0xC0, 0x00, 0x00, 0x00, 0x40, 0x23, 0x3E}));
  REQUIRE(decode(enc, DType::kF32, f32).is_ok());
  CHECK(f32 == f32s({-2.0f, 0.0f, 2.0f, 0.07958029955625534f * 2.0f}));
}

}  // namespace
}  // namespace kvtier::nf4
