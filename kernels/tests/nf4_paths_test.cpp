// The AVX-512 and AVX2 paths, the scalar path and the reference agree byte for byte, encode and
// decode.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

Bytes encode_via(const char* path, const Params& p, const Bytes& src) {
  Bytes out(encoded_size(p), std::byte{0xCD});
  Status st = path == nullptr ? reference::encode(p, src, out) : encode_with(path, p, src, out);
  INFO(testing::describe(p) << " " << (path ? path : "reference") << ": " << st.to_string());
  REQUIRE(st.is_ok());
  return out;
}

Bytes decode_via(const char* path, const Bytes& enc, DType out_dtype, size_t n) {
  Bytes out(n * dtype_size(out_dtype), std::byte{0xCD});
  Status st = path == nullptr ? reference::decode(enc, out_dtype, out)
                              : decode_with(path, enc, out_dtype, out);
  REQUIRE(st.is_ok());
  return out;
}

// Every optimised path this CPU runs; each must equal the reference byte for byte.
std::vector<const char*> cpu_paths() {
  std::vector<const char*> paths = {"scalar"};
  if (avx2::supported()) paths.push_back("avx2");
  if (avx512::supported()) paths.push_back("avx512");
  return paths;
}

TEST_CASE("nf4 avx512 == avx2 == scalar == reference, byte for byte", "[nf4][paths]") {
  const std::vector<const char*> paths = cpu_paths();
  if (!avx2::supported()) WARN("no AVX2/F16C on this CPU: checking scalar against reference only");
  if (!avx512::supported()) WARN("no AVX-512 F/BW/VL/DQ on this CPU: avx512 path not checked");
  // Shapes: cols % 64 == 0, % 32, % 16, % 8 == 0, odd; partial row blocks, partial column
  // groups, more than 16 row blocks (the AVX-512 path reduces 16 at a time) with a tail.
  const uint64_t shapes[][2] = {{1, 64},  {2, 128},  {64, 128}, {130, 128}, {3, 8},
                                {67, 24}, {5, 200},  {9, 63},   {1, 1},     {257, 72},
                                {70, 48}, {129, 96}, {33, 160}, {19, 1037}};
  uint32_t seed = 1;
  for (auto [rows, cols] : shapes) {
    for (DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
      for (int l = 0; l < 2; ++l) {
        for (int variant = 0; variant < 3; ++variant) {  // no dq, v2 dq, v1 dq
          Params p{dt, static_cast<Nf4Layout>(l), variant > 0, rows, cols};
          if (variant == 2) p.version = kVersion1;
          std::vector<float> v = seed % 2 ? testing::tricky(rows * cols, seed)
                                          : testing::normal(rows, cols, seed, {cols / 3}, 20.0f);
          ++seed;
          Bytes src = testing::to_dtype(v, dt);
          Bytes ref = encode_via(nullptr, p, src);
          INFO(testing::describe(p));
          for (const char* path : paths) {
            INFO("path " << path);
            REQUIRE(encode_via(path, p, src) == ref);
          }
          for (DType out : {DType::kF16, DType::kBF16, DType::kF32}) {
            INFO("decode to " << dtype_name(out));
            Bytes want = decode_via(nullptr, ref, out, rows * cols);
            for (const char* path : paths) {
              INFO("path " << path);
              REQUIRE(decode_via(path, ref, out, rows * cols) == want);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("nf4 paths reject NaN and Inf anywhere, also in a fused pass", "[nf4][paths]") {
  for (const char* path : cpu_paths()) {
    for (DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
      for (int l = 0; l < 2; ++l) {
        Params p{dt, static_cast<Nf4Layout>(l), false, 70, 48};
        for (uint64_t at : {uint64_t{0}, uint64_t{1100}, uint64_t{70 * 48 - 1}}) {
          for (float bad : {NAN, INFINITY, -INFINITY}) {
            std::vector<float> v = testing::normal(70, 48, 5);
            v[at] = bad;
            Bytes src = testing::to_dtype(v, dt), out(encoded_size(p));
            INFO(path << " " << testing::describe(p) << " at " << at);
            CHECK(encode_with(path, p, src, out).code() == Errc::kInvalidArgument);
          }
        }
      }
    }
  }
}

TEST_CASE("nf4 paths agree on unaligned buffers", "[nf4][paths]") {
  Params p{DType::kF16, Nf4Layout::kRowBlocks, false, 4, 128};
  Bytes src = testing::to_dtype(testing::normal(4, 128, 11), DType::kF16);
  Bytes shifted(src.size() + 1);
  std::copy(src.begin(), src.end(), shifted.begin() + 1);
  Bytes a(encoded_size(p)), b(encoded_size(p) + 3);
  REQUIRE(encode(p, src, a).is_ok());
  REQUIRE(encode(p, std::span(shifted).subspan(1), std::span(b).subspan(3)).is_ok());
  CHECK(std::equal(a.begin(), a.end(), b.begin() + 3));
  Bytes out(src.size() + 1);
  REQUIRE(decode(std::span(b).subspan(3), DType::kF16, std::span(out).subspan(1)).is_ok());
  CHECK(std::equal(out.begin() + 1, out.end(), testing::decode_ok(a, DType::kF16).begin()));
}

}  // namespace
}  // namespace kvtier::nf4
