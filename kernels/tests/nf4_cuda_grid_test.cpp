// Runs the CUDA launcher's batch sequences (nf4_cuda_batch.h) with every launch's grid run on
// the CPU, in the order the launcher (nf4_cuda.cu) queues them, and compares with the
// reference.  This exercises the
// device code on machines without a GPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"
#include "kernels/nf4_cuda_args.h"
#include "kernels/nf4_cuda_batch.h"
#include "kernels/nf4_cuda_kernels.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

// The executor of nf4_cuda_batch.h's sequences on the CPU: every launch runs its grid one
// thread at a time, in block order.
struct Cpu {
  std::vector<std::vector<uint64_t>> allocations;
  uint32_t launches = 0;

  bool ok() const { return true; }
  void fail_too_large() { FAIL("batch grid too large"); }
  void* alloc(uint64_t bytes) {
    allocations.emplace_back((bytes + 7) / 8, 0xCDCDCDCDCDCDCDCDull);  // not zeroed, 8-aligned
    return allocations.back().data();
  }
  void zero(void* p, uint64_t bytes) { std::memset(p, 0, bytes); }
  void download(void* dst, const void* src, uint64_t bytes) { std::memcpy(dst, src, bytes); }
  void launch(const dev::BatchParams& p, uint32_t blocks) {
    ++launches;
    for (uint32_t b = 0; b < blocks; ++b)
      for (uint32_t t = 0; t < dev::kThreadsPerBlock; ++t)
        dev::batch_thread(p, b, dev::kThreadsPerBlock, t);
  }
  void release(void*) {}
  bool sync() { return true; }
};

struct EncodeJob {
  Params p;
  const std::byte* src = nullptr;
  std::byte* dst = nullptr;
};

// The launcher's encode (cuda::quantize_batch, detail::encode_batch); each job's flag.
std::vector<uint32_t> emulate_encode_batch(const std::vector<EncodeJob>& jobs, Cpu& x) {
  std::vector<dev::CodecArgs> ops;
  std::vector<uint8_t> headers(jobs.size() * dev::kHeaderBytes);
  for (size_t i = 0; i < jobs.size(); ++i) {
    Header h = plan(jobs[i].p);
    write_header(h, reinterpret_cast<std::byte*>(headers.data() + i * dev::kHeaderBytes));
    dev::CodecArgs a = codec_args(h, static_cast<uint8_t>(jobs[i].p.dtype));
    a.src = jobs[i].src;
    a.encoded = reinterpret_cast<uint8_t*>(jobs[i].dst);
    ops.push_back(a);
  }
  std::vector<uint32_t> bad(jobs.size());
  dev::encode_batch(x, ops, headers.data(), bad.data());
  return bad;
}

// One tensor; false on bad input.
bool emulate_encode(const Params& p, const Bytes& src, Bytes& out) {
  out.assign(encoded_size(p), std::byte{0xCD});
  Cpu x;
  return emulate_encode_batch({{p, src.data(), out.data()}}, x).front() == 0;
}

void emulate_decode(const Bytes& encoded, DType out, std::byte* dst) {
  dev::CodecArgs a = codec_args(*parse_header(encoded), static_cast<uint8_t>(out));
  a.encoded = reinterpret_cast<uint8_t*>(const_cast<std::byte*>(encoded.data()));
  a.dst = dst;
  Cpu x;
  dev::decode_batch(x, {a});
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
            Bytes ref(rows * cols * dtype_size(out));
            REQUIRE(reference::decode(want, out, ref).is_ok());
            // Aligned (vector stores) and aligned to the element only (scalar stores).
            for (size_t shift : {size_t{0}, dtype_size(out)}) {
              Bytes dst(ref.size() + shift, std::byte{0xCD});
              emulate_decode(want, out, dst.data() + shift);
              REQUIRE(Bytes(dst.begin() + shift, dst.end()) == ref);
            }
          }
        }
      }
    }
  }
}

// Two fp32 blocks, FLT_MAX and a value a few hundred ulps below it, whose v1 double-quant
// scales overflow when read back; the reference refuses them.
Bytes dq_overflow_input(Params& p) {
  p = Params{DType::kF32, Nf4Layout::kRowBlocks, true, 2, 64};
  p.version = kVersion1;
  const float big = std::numeric_limits<float>::max();
  float low = big;
  for (int k = 0; k < 2000; ++k) {
    low = std::nextafter(low, 0.0f);
    std::vector<float> v(2 * 64, 0.0f);
    v[0] = big;
    v[64] = low;
    Bytes src = testing::to_dtype(v, DType::kF32), enc(encoded_size(p));
    if (reference::encode(p, src, enc).code() == Errc::kInvalidArgument) return src;
  }
  return {};
}

TEST_CASE("nf4 CUDA batch: many tensors of every kind in a few launches, each its own result",
          "[nf4][cuda]") {
  struct Case {
    Params p;
    Bytes src, want, out;
    size_t shift = 0;  // src aligned to its element only (scalar loads)
    bool nan = false, overflow = false;
  };
  std::vector<Case> cases;
  uint32_t seed = 7;
  const uint64_t shapes[][2] = {{1, 1}, {3, 7}, {64, 128}, {130, 72}, {9, 64}, {600, 64}};
  for (int i = 0; i < 37; ++i) {
    Case c;
    auto [rows, cols] = shapes[i % 6];
    const DType dt = i % 3 == 0 ? DType::kF16 : i % 3 == 1 ? DType::kBF16 : DType::kF32;
    c.p = Params{dt, static_cast<Nf4Layout>(i / 3 % 2), i % 4 != 0, rows, cols};
    if (i % 5 == 2) c.p.version = kVersion1;
    c.shift = i % 7 == 3 ? dtype_size(dt) : 0;
    std::vector<float> v = testing::normal(rows, cols, ++seed, {cols / 2}, 8.0f);
    c.nan = i == 11 && v.size() > 5;
    if (c.nan) v[5] = std::numeric_limits<float>::quiet_NaN();
    c.src = testing::to_dtype(v, dt);
    cases.push_back(std::move(c));
  }
  Case over;
  over.src = dq_overflow_input(over.p);
  REQUIRE_FALSE(over.src.empty());
  over.overflow = true;
  cases.insert(cases.begin() + 20, std::move(over));

  std::vector<EncodeJob> jobs;
  std::vector<Bytes> shifted(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    shifted[i].assign(c.shift, std::byte{0});
    shifted[i].insert(shifted[i].end(), c.src.begin(), c.src.end());
    c.out.assign(encoded_size(c.p), std::byte{0xCD});
    c.want.assign(encoded_size(c.p), std::byte{0});
    if (!c.nan && !c.overflow) REQUIRE(reference::encode(c.p, c.src, c.want).is_ok());
    jobs.push_back({c.p, shifted[i].data() + c.shift, c.out.data()});
  }
  Cpu x;
  const std::vector<uint32_t> bad = emulate_encode_batch(jobs, x);
  // 8 steps at most, each once per 16 tensors (one at a time would be ~5 per tensor).
  CHECK(x.launches <= 8 * ((cases.size() + dev::kBatchOps - 1) / dev::kBatchOps));
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO(i << ": " << testing::describe(c.p));
    if (c.nan) {
      CHECK(bad[i] == 1);
      CHECK(c.out == Bytes(c.out.size(), std::byte{0xCD}));  // nothing written
    } else if (c.overflow) {
      CHECK(bad[i] == 2);
      CHECK_FALSE(parse_header(c.out).is_ok());  // header cleared
    } else {
      CHECK(bad[i] == 0);
      CHECK(c.out == c.want);
    }
  }

  // Decode every good one back in one batch, into aligned and element-aligned places.
  std::vector<dev::CodecArgs> ops;
  std::vector<Bytes> ref, got;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    if (c.nan || c.overflow) continue;
    const DType out = i % 2 ? DType::kF16 : DType::kBF16;
    ref.emplace_back(c.p.rows * c.p.cols * 2);
    REQUIRE(reference::decode(c.want, out, ref.back()).is_ok());
    got.emplace_back(ref.back().size() + c.shift, std::byte{0xCD});
    dev::CodecArgs a = codec_args(*parse_header(c.want), static_cast<uint8_t>(out));
    a.encoded = reinterpret_cast<uint8_t*>(const_cast<std::byte*>(c.want.data()));
    a.dst = got.back().data() + c.shift;
    ops.push_back(a);
  }
  Cpu y;
  dev::decode_batch(y, ops);
  CHECK(y.launches == (ops.size() + dev::kBatchOps - 1) / dev::kBatchOps);
  for (size_t k = 0; k < ops.size(); ++k) {
    const size_t shift = got[k].size() - ref[k].size();
    CHECK(Bytes(got[k].begin() + shift, got[k].end()) == ref[k]);
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
