// Runs every CUDA kernel body over its whole launch grid on the CPU, in the order the
// launcher (nf4_cuda.cu) queues them, and compares with the reference.  This exercises the
// device code on machines without a GPU.
#include <catch2/catch.hpp>

#include <cstring>

#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"
#include "kernels/nf4_cuda_kernels.h"
#include "kernels/nf4_cuda_args.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;
using Body = void (*)(const dev::CodecArgs&, uint32_t, uint32_t, uint32_t);

// kernel<<<grid_blocks(work), kThreadsPerBlock>>>(a), one thread at a time.
void run_grid(Body body, uint64_t work, const dev::CodecArgs& a) {
  for (uint64_t b = 0; b < dev::grid_blocks(work); ++b) {
    for (uint32_t t = 0; t < dev::kThreadsPerBlock; ++t) {
      body(a, static_cast<uint32_t>(b), dev::kThreadsPerBlock, t);
    }
  }
}

// The launcher's encode sequence (detail::encode); false on bad input.
bool emulate_encode(const Params& p, const Bytes& src, Bytes& out) {
  Header h = plan(p);
  out.assign(h.total_size, std::byte{0xCD});
  std::vector<float> scales(h.num_blocks);
  std::vector<double> sums(h.num_groups);
  float offset = 0;
  uint32_t bad = 0;
  dev::CodecArgs a = codec_args(h, static_cast<uint8_t>(p.dtype));
  a.src = src.data();
  a.encoded = reinterpret_cast<uint8_t*>(out.data());
  a.scales = scales.data();
  a.group_sums = sums.data();
  a.offset = &offset;
  a.bad_input = &bad;
  run_grid(dev::absmax_thread, h.num_blocks, a);
  if (bad != 0) return false;
  write_header(h, out.data());
  std::memset(out.data() + a.header_size, 0, h.codes_offset - a.header_size);
  if (a.log_dq) {
    run_grid(dev::dq7_thread, h.num_groups, a);
  } else if (p.double_quant) {
    run_grid(dev::dq_sum_thread, h.num_groups, a);
    run_grid(dev::dq_offset_thread, 1, a);
    run_grid(dev::dq_quant_thread, h.num_groups, a);
  } else {
    std::memcpy(out.data() + h.scales_offset, scales.data(), scales.size() * 4);
  }
  run_grid(dev::codes_thread, (a.n + 1) / 2, a);
  return bad == 0;
}

TEST_CASE("nf4 CUDA kernel bodies over their grids equal the reference", "[nf4][cuda]") {
  const uint64_t shapes[][2] = {{1, 1}, {3, 7}, {64, 128}, {130, 72}, {1, 64 * 300}, {600, 64}};
  uint32_t seed = 100;
  for (auto [rows, cols] : shapes) {
    for (DType dt : {DType::kF16, DType::kBF16, DType::kF32}) {
      for (int l = 0; l < 2; ++l) {
        for (int variant = 0; variant < 3; ++variant) {  // no dq, v2 dq, v1 dq
          Params p{dt, static_cast<Nf4Layout>(l), variant > 0, rows, cols};
          if (variant == 2) p.version = kVersion1;
          INFO(testing::describe(p));
          std::vector<float> v = seed % 2 ? testing::tricky(rows * cols, seed)
                                          : testing::normal(rows, cols, seed, {cols / 2}, 12.0f);
          ++seed;
          Bytes src = testing::to_dtype(v, dt);
          Bytes want(encoded_size(p)), got;
          REQUIRE(reference::encode(p, src, want).is_ok());
          REQUIRE(emulate_encode(p, src, got));
          REQUIRE(got == want);
          for (DType out : {DType::kF16, DType::kBF16, DType::kF32}) {
            Bytes ref(rows * cols * dtype_size(out)), dst(ref.size(), std::byte{0xCD});
            REQUIRE(reference::decode(want, out, ref).is_ok());
            dev::CodecArgs a = codec_args(*parse_header(want), static_cast<uint8_t>(out));
            a.encoded = reinterpret_cast<uint8_t*>(want.data());
            a.dst = dst.data();
            run_grid(dev::decode_thread, (a.n + 1) / 2, a);
            REQUIRE(dst == ref);
          }
        }
      }
    }
  }
}

TEST_CASE("nf4 CUDA kernel bodies flag NaN/Inf input", "[nf4][cuda]") {
  std::vector<float> v = testing::normal(8, 64, 1);
  v[300] = std::numeric_limits<float>::infinity();
  Bytes out;
  for (int l = 0; l < 2; ++l) {
    Params p{DType::kF16, static_cast<Nf4Layout>(l), false, 8, 64};
    CHECK_FALSE(emulate_encode(p, testing::to_dtype(v, DType::kF16), out));
  }
}

TEST_CASE("nf4 CUDA launcher without a usable GPU returns a clean error", "[nf4][cuda]") {
  if (cuda::available()) {
    SUCCEED("a GPU is present; the no-driver path is not exercised");
    return;
  }
  Params p{DType::kF16, Nf4Layout::kRowBlocks, false, 1, 64};
  alignas(16) std::byte src[128] = {}, dst[256] = {};
  Status st = cuda::quantize(p, src, dst, nullptr);
  INFO(st.to_string());
  CHECK(st.code() == Errc::kUnavailable);
  Header h = plan(p);
  CHECK(cuda::dequantize(h, dst, DType::kF16, src, nullptr).code() == Errc::kUnavailable);
}

}  // namespace
}  // namespace kvtier::nf4
