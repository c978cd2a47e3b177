// promote_block and demote_blocks.  promote_block against host layouts that disagree with
// their bytes (the disk tier reads a block's layout back from its index): refused, and nothing
// outside the tensor's place in the pool is written.  Found by fuzz/fuzz_nf4.cpp
// (fuzz/crashes/nf4/).  demote_blocks: one quantize batch for every block.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>
#include <string>

#include "engine/gpu_moves.h"
#include "kernels/nf4.h"
#include "tiers/gpu/device_backend.h"

using namespace kvtier;

namespace {

constexpr uint64_t kPool = 2 << 20;
constexpr std::byte kFill{0xa5};

struct Fixture {
  std::unique_ptr<gpu::DeviceBackend> backend = gpu::make_emulation_backend(1, kPool);
  std::unique_ptr<gpu::DevicePool> pool =
      std::move(backend->create_pool(0, kPool, gpu::HandleType::kMemfd).value());
  std::byte* base() { return reinterpret_cast<std::byte*>(pool->base()); }
  void fill() { std::memset(base(), static_cast<int>(kFill), kPool); }
  // No byte outside [begin, end) changed.
  bool untouched_outside(uint64_t begin, uint64_t end) {
    for (uint64_t i = 0; i < kPool; ++i)
      if ((i < begin || i >= end) && base()[i] != kFill) return false;
    return true;
  }
};

TensorLayout tensor(Codec codec, std::vector<uint64_t> shape, uint64_t bytes) {
  TensorLayout t;
  t.name = "k";
  t.dtype = DType::kF16;
  t.shape = std::move(shape);
  t.codec = codec;
  t.raw_bytes = t.elements() * 2;
  t.bytes = bytes;
  return t;
}

}  // namespace

TEST_CASE("promote_block refuses an NF4 encoding larger than its layout's shape") {
  Fixture f;
  // 64 x 64 values encoded; the layout claims 8 x 64.
  nf4::Params p{DType::kF16, Nf4Layout::kRowBlocks, false, 64, 64};
  std::vector<std::byte> src(64 * 64 * 2, std::byte{0x3c});
  std::vector<std::byte> enc(nf4::encoded_size(p));
  REQUIRE(nf4::encode(p, src, enc).is_ok());
  BlockLayout host;
  host.tensors.push_back(tensor(Codec::kNf4, {8, 64}, enc.size()));
  host.total_bytes = enc.size();
  const BlockLayout gpu = plan_gpu_layout(host);
  f.fill();
  Status st = promote_block(*f.pool, host, enc.data(), gpu, 4096);
  CHECK(st.code() == Errc::kCorrupt);
  CHECK(f.untouched_outside(4096, 4096 + gpu.tensors[0].bytes));
  // The same encoding with its true shape goes in.
  host.tensors[0] = tensor(Codec::kNf4, {64, 64}, enc.size());
  CHECK(promote_block(*f.pool, host, enc.data(), plan_gpu_layout(host), 4096).is_ok());
}

TEST_CASE("promote_block refuses raw bytes that do not fill exactly their place") {
  Fixture f;
  std::vector<std::byte> raw(8192, std::byte{1});
  BlockLayout host;
  host.tensors.push_back(tensor(Codec::kRaw, {4, 64}, raw.size()));  // place of 512 bytes
  host.total_bytes = raw.size();
  const BlockLayout gpu = plan_gpu_layout(host);
  f.fill();
  CHECK(promote_block(*f.pool, host, raw.data(), gpu, 0).code() == Errc::kCorrupt);
  CHECK(f.untouched_outside(0, 0));
  // A tensor that claims bytes past the end of its block.
  host.tensors[0] = tensor(Codec::kRaw, {4, 64}, 512);
  host.tensors[0].offset = 8000;
  CHECK(promote_block(*f.pool, host, raw.data(), plan_gpu_layout(host), 0).code() ==
        Errc::kCorrupt);
}

TEST_CASE("promote_blocks: one batch, a result per block; a bad block spoils only itself") {
  Fixture f;
  nf4::Params p{DType::kF16, Nf4Layout::kRowBlocks, true, 64, 64};
  std::vector<std::vector<std::byte>> src, enc;
  for (int b = 0; b < 3; ++b) {
    src.emplace_back(64 * 64 * 2);
    for (size_t i = 0; i < src.back().size(); i += 2) {
      const _Float16 h = static_cast<_Float16>(float((i / 2 + b * 7) % 23) / 23.f - 0.5f);
      std::memcpy(&src.back()[i], &h, 2);
    }
    enc.emplace_back(nf4::encoded_size(p));
    REQUIRE(nf4::encode(p, src.back(), enc.back()).is_ok());
  }
  std::vector<BlockLayout> host(3), gpu(3);
  for (int b = 0; b < 3; ++b) {
    host[b].tensors.push_back(tensor(Codec::kNf4, {64, 64}, enc[b].size()));
    host[b].total_bytes = enc[b].size();
  }
  host[1].tensors[0] = tensor(Codec::kNf4, {8, 64}, enc[1].size());  // block 1 lies about its shape
  for (int b = 0; b < 3; ++b) gpu[b] = plan_gpu_layout(host[b]);
  f.fill();
  std::vector<GpuPromotion> batch;
  for (int b = 0; b < 3; ++b)
    batch.push_back({&host[b], enc[b].data(), &gpu[b], uint64_t(b) << 16});
  const std::vector<Status> r = promote_blocks(*f.pool, batch);
  REQUIRE(r.size() == 3);
  CHECK(r[0].is_ok());
  CHECK(r[1].code() == Errc::kCorrupt);
  CHECK(r[2].is_ok());
  // The good blocks hold the CPU codec's decoding, the bad one's place is untouched.
  for (int b : {0, 2}) {
    std::vector<std::byte> want(64 * 64 * 2);
    REQUIRE(nf4::decode(enc[b], DType::kF16, want).is_ok());
    CHECK(std::memcmp(f.base() + (uint64_t(b) << 16), want.data(), want.size()) == 0);
  }
  for (uint64_t i = 1 << 16; i < (1 << 16) + 8 * 64 * 2; ++i) REQUIRE(f.base()[i] == kFill);
}

namespace {

// The emulated pool, counting the quantize calls demote_blocks makes.
class CountingPool final : public gpu::DevicePool {
 public:
  explicit CountingPool(gpu::DevicePool& inner) : inner_(inner) {}
  int batches = 0, batched_ops = 0, single = 0;

  int device() const override { return inner_.device(); }
  uint64_t size() const override { return inner_.size(); }
  gpu::HandleType handle_type() const override { return inner_.handle_type(); }
  std::uintptr_t base() const override { return inner_.base(); }
  Result<gpu::PoolExport> export_handle(bool w) const override { return inner_.export_handle(w); }
  Status write(uint64_t o, std::span<const std::byte> s) override { return inner_.write(o, s); }
  Status read(uint64_t o, std::span<std::byte> d) override { return inner_.read(o, d); }
  Status copy_from(gpu::DevicePool& s, uint64_t so, uint64_t d, uint64_t n) override {
    return inner_.copy_from(s, so, d, n);
  }
  Status dequantize_into(std::span<const std::byte> e, DType t, uint64_t o) override {
    return inner_.dequantize_into(e, t, o);
  }
  Status quantize_from(const nf4::Params& p, uint64_t o, std::span<std::byte> d) override {
    ++single;
    return inner_.quantize_from(p, o, d);
  }
  std::vector<Status> quantize_batch(std::span<const gpu::QuantizeOp> ops) override {
    ++batches;
    batched_ops += static_cast<int>(ops.size());
    return inner_.quantize_batch(ops);
  }

 private:
  gpu::DevicePool& inner_;
};

}  // namespace

TEST_CASE("demote_blocks: every NF4 tensor in one quantize batch; NaN input fails only its block") {
  Fixture f;
  CountingPool pool(*f.pool);
  const Nf4Options opts;  // double quant, no outlier channels
  constexpr int kBlocks = 3;
  std::vector<BlockLayout> host(kBlocks), gpu(kBlocks);
  std::vector<std::vector<float>> values;
  for (int b = 0; b < kBlocks; ++b) {
    for (const char* name : {"k", "v", "meta"}) {
      const bool raw = std::string(name) == "meta";
      TensorLayout t = tensor(raw ? Codec::kRaw : Codec::kNf4, {64, 64}, 0);
      t.name = name;
      nf4::Params p = nf4_params(t, opts);
      t.bytes = raw ? t.raw_bytes : nf4::encoded_size(p);
      t.offset = host[b].total_bytes;
      host[b].total_bytes = (t.offset + t.bytes + 63) / 64 * 64;
      host[b].tensors.push_back(t);
    }
    gpu[b] = plan_gpu_layout(host[b]);
    for (size_t i = 0; i < 3; ++i) {
      std::vector<std::byte> src(64 * 64 * 2);
      for (size_t e = 0; e < 64 * 64; ++e) {
        _Float16 h = static_cast<_Float16>(float((e * 7 + b * 13 + i) % 31) / 31.f - 0.5f);
        if (b == 1 && i == 1 && e == 100) h = static_cast<_Float16>(__builtin_nanf(""));
        std::memcpy(&src[e * 2], &h, 2);
      }
      REQUIRE(f.pool->write((uint64_t(b) << 16) + gpu[b].tensors[i].offset, src).is_ok());
    }
  }
  std::vector<std::vector<std::byte>> dest(kBlocks);
  std::vector<GpuDemotion> batch;
  for (int b = 0; b < kBlocks; ++b) {
    dest[b].assign(host[b].total_bytes, std::byte{0});
    batch.push_back({&gpu[b], uint64_t(b) << 16, &host[b], dest[b].data(), &opts});
  }
  const std::vector<Status> r = demote_blocks(pool, batch);
  REQUIRE(r.size() == kBlocks);
  CHECK(pool.batches == 1);
  CHECK(pool.batched_ops == 2 * kBlocks);  // k and v of every block
  CHECK(pool.single == 0);
  CHECK(r[0].is_ok());
  CHECK(r[1].code() == Errc::kInvalidArgument);  // its v holds a NaN
  CHECK(r[2].is_ok());
  for (int b : {0, 2}) {
    for (size_t i = 0; i < 3; ++i) {
      const TensorLayout& h = host[b].tensors[i];
      std::vector<std::byte> raw(64 * 64 * 2), want(h.bytes);
      REQUIRE(f.pool->read((uint64_t(b) << 16) + gpu[b].tensors[i].offset, raw).is_ok());
      if (h.codec == Codec::kNf4) {
        REQUIRE(nf4::encode(nf4_params(gpu[b].tensors[i], opts), raw, want).is_ok());
      } else {
        want = raw;
      }
      CHECK(std::memcmp(dest[b].data() + h.offset, want.data(), want.size()) == 0);
      CHECK(h.checksum == checksum64(want.data(), want.size()));
    }
  }
}
