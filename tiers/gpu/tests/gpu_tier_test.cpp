#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <vector>

#include "tiers/gpu/gpu_tier.h"
#include "tiers/tests/tier_test_util.h"

using namespace kvtier;

namespace {

using testing::key;

struct Fixture {
  std::unique_ptr<gpu::DeviceBackend> backend = gpu::make_emulation_backend(2, 64ull << 20);
  std::unique_ptr<GpuTier> tier;

  explicit Fixture(uint64_t bytes, int device = 0) {
    GpuTier::Options o;
    o.device = device;
    o.bytes = bytes;
    auto t = GpuTier::create(*backend, o);
    REQUIRE(t.is_ok());
    tier = std::move(t).value();
  }
};

BlockLayout layout_of(uint64_t bytes) {
  return testing::layout_of(bytes, DType::kF16);
}
// A block whose every byte is (i & 0xff), written through the pool like the daemon does.
void put(GpuTier& tier, uint64_t i, uint64_t bytes) {
  auto ext = tier.reserve(bytes);
  REQUIRE(ext.is_ok());
  std::vector<std::byte> data(bytes, std::byte(i & 0xff));
  REQUIRE(tier.pool().write(ext->offset, data).is_ok());
  REQUIRE(tier.insert(key(i), *ext, layout_of(bytes)).is_ok());
}

std::byte byte_at(GpuTier& tier, const Extent& e, uint64_t at) {
  std::byte b{};
  REQUIRE(tier.pool().read(e.offset + at, {&b, 1}).is_ok());
  return b;
}

}  // namespace

TEST_CASE("gpu tier: put, find, acquire, release") {
  Fixture f(16 << 20, 1);
  GpuTier& tier = *f.tier;
  CHECK(tier.kind() == TierKind::kGpu);
  CHECK(std::string(tier.name()) == "gpu");
  CHECK(tier.device() == 1);
  CHECK(tier.arena_id() == 1);
  CHECK(tier.usage().capacity_bytes == 16 << 20);
  put(tier, 1, 4096);
  CHECK(tier.find(key(2)) == nullptr);
  const BlockInfo* b = tier.find(key(1));
  REQUIRE(b != nullptr);
  CHECK(b->extent.arena == 1);
  CHECK(b->extent.offset % 256 == 0);
  CHECK(b->leases == 0);
  const BlockInfo* a = tier.acquire(key(1));
  REQUIRE(a == b);
  CHECK(a->leases == 1);
  CHECK(a->hits == 1);
  CHECK(byte_at(tier, a->extent, 4095) == std::byte{1});
  CHECK(tier.usage().leased_blocks == 1);
  tier.release(a);
  CHECK(tier.usage().leased_blocks == 0);
  CHECK(tier.usage().used_bytes == 4096);
  CHECK(tier.usage().raw_bytes == 4096);
  CHECK(tier.usage().blocks == 1);
  size_t seen = 0;
  tier.visit([&](const BlockInfo& info) { seen += info.id == key(1); });
  CHECK(seen == 1);
}

TEST_CASE("gpu tier: the pool is rounded up to the granularity") {
  Fixture f(3 << 20);
  CHECK(f.tier->pool().size() == 4 << 20);
  CHECK(f.tier->usage().capacity_bytes == 4 << 20);
}

TEST_CASE("gpu tier: a pool the device cannot hold is refused, naming the device") {
  auto backend = gpu::make_emulation_backend(1, 8 << 20);
  GpuTier::Options o;
  o.bytes = 16 << 20;
  auto t = GpuTier::create(*backend, o);
  REQUIRE(!t.is_ok());
  CHECK(t.status().code() == Errc::kNoSpace);
  CHECK_THAT(t.status().message(), Catch::StartsWith("gpu 0 tier: "));
  o.device = 3;
  CHECK(GpuTier::create(*backend, o).status().code() == Errc::kUnavailable);
}

TEST_CASE("gpu tier: duplicate insert is refused and the extent stays reserved") {
  Fixture f(16 << 20);
  put(*f.tier, 1, 4096);
  auto ext = f.tier->reserve(4096);
  REQUIRE(ext.is_ok());
  CHECK(f.tier->insert(key(1), *ext, layout_of(4096)).code() == Errc::kAlreadyExists);
  CHECK(f.tier->usage().reserved_bytes == 4096);
  f.tier->unreserve(*ext);
  CHECK(f.tier->usage().reserved_bytes == 0);
}

TEST_CASE("gpu tier: removing a leased block is deferred to the last release") {
  Fixture f(16 << 20);
  GpuTier& tier = *f.tier;
  put(tier, 7, 8192);
  const BlockInfo* a = tier.acquire(key(7));
  const BlockInfo* b = tier.acquire(key(7));
  CHECK(tier.remove(key(7)) == RemoveOutcome::kDeferred);
  CHECK(tier.find(key(7)) == nullptr);
  CHECK(a->doomed);
  // The region is not reused while leased: new blocks land elsewhere, its bytes stay.
  put(tier, 8, 8192);
  CHECK(tier.find(key(8))->extent.offset != a->extent.offset);
  CHECK(byte_at(tier, a->extent, 100) == std::byte{7});
  CHECK(tier.usage().used_bytes == 2 * 8192);
  tier.release(a);
  CHECK(tier.usage().used_bytes == 2 * 8192);
  tier.release(b);
  CHECK(tier.usage().used_bytes == 8192);
  CHECK(tier.remove(key(7)) == RemoveOutcome::kNotFound);
  CHECK(tier.remove(key(8)) == RemoveOutcome::kRemoved);
  CHECK(tier.usage().used_bytes == 0);
}

TEST_CASE("gpu tier: capacity eviction calls the listener while the bytes are intact") {
  Fixture f(8 << 20);
  GpuTier& tier = *f.tier;
  const uint64_t sz = 1 << 20;
  put(tier, 0, sz);
  const BlockInfo* pinned = tier.acquire(key(0));
  std::vector<uint64_t> evicted;
  tier.set_evict_listener([&](const BlockInfo& b) {
    // What the daemon does here: read the block out of the pool to demote it.
    std::vector<std::byte> bytes(b.extent.bytes);
    REQUIRE(tier.pool().read(b.extent.offset, bytes).is_ok());
    const std::byte want{static_cast<unsigned char>(b.id.key.lo & 0xff)};
    CHECK(std::all_of(bytes.begin(), bytes.end(), [&](std::byte x) { return x == want; }));
    CHECK(tier.find(b.id) == &b);  // still indexed while the listener runs
    evicted.push_back(b.id.key.lo);
  });
  for (uint64_t i = 1; i < 32; ++i) put(tier, i, sz);  // 4x the capacity
  CHECK(!evicted.empty());
  CHECK(std::find(evicted.begin(), evicted.end(), 0) == evicted.end());
  CHECK(tier.find(key(0)) != nullptr);
  CHECK(byte_at(tier, pinned->extent, sz - 1) == std::byte{0});
  CHECK(tier.usage().evictions == evicted.size());
  CHECK(tier.usage().evicted_bytes == evicted.size() * sz);
  CHECK(tier.usage().used_bytes <= tier.usage().capacity_bytes);
  tier.release(pinned);

  // Admin eviction and remove() do not call the listener.
  const size_t before = evicted.size();
  auto c = tier.evict_matching([](const NsKey&) { return true; });
  CHECK(c.evicted > 0);
  CHECK(evicted.size() == before);
  CHECK(tier.usage().blocks == 0);
}

TEST_CASE("gpu tier: full of leased blocks reports no space naming the device") {
  Fixture f(8 << 20, 1);
  GpuTier& tier = *f.tier;
  const uint64_t sz = 1 << 20;
  std::vector<const BlockInfo*> leases;
  for (uint64_t i = 0;; ++i) {
    auto ext = tier.reserve(sz);
    if (!ext) {
      CHECK(ext.status().code() == Errc::kNoSpace);
      CHECK_THAT(ext.status().message(), Catch::StartsWith("gpu 1 tier full: "));
      CHECK_THAT(ext.status().message(), Catch::Contains("8 of 8 blocks leased"));
      CHECK_THAT(ext.status().message(), Catch::Contains("gpu.size"));
      break;
    }
    REQUIRE(tier.insert(key(i), *ext, layout_of(sz)).is_ok());
    leases.push_back(tier.acquire(key(i)));
    REQUIRE(i < 100);
  }
  CHECK(tier.usage().blocks == leases.size());  // nothing was lost
  for (auto* b : leases) tier.release(b);
  CHECK(tier.reserve(sz).is_ok());
}

TEST_CASE("gpu tier: oversized block is refused") {
  Fixture f(8 << 20);
  auto r = f.tier->reserve(16 << 20);
  CHECK(r.status().code() == Errc::kNoSpace);
  CHECK_THAT(r.status().message(), Catch::Contains("gpu 0 tier"));
  CHECK(f.tier->reserve(0).status().code() == Errc::kNoSpace);
}
