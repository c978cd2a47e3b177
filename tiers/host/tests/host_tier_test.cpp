#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>

#include "tiers/host/host_tier.h"
#include "tiers/tests/tier_test_util.h"

using namespace kvtier;

namespace {

using testing::key;
using testing::layout_of;

std::unique_ptr<HostTier> make_tier(uint64_t bytes) {
  HostTier::Options o;
  o.shm_name = "kvtier-test-" + std::to_string(::getpid());
  o.bytes = bytes;
  auto t = HostTier::create(o);
  REQUIRE(t.is_ok());
  return std::move(t).value();
}

void put(HostTier& tier, uint64_t i, uint64_t bytes) {
  auto ext = tier.reserve(bytes);
  REQUIRE(ext.is_ok());
  std::memset(tier.data(*ext), int(i & 0xff), bytes);
  REQUIRE(tier.insert(key(i), *ext, layout_of(bytes)).is_ok());
}

}  // namespace

TEST_CASE("insert, find, acquire, release") {
  auto tier = make_tier(16 << 20);
  put(*tier, 1, 4096);
  REQUIRE(tier->find(key(1)) != nullptr);
  CHECK(tier->find(key(2)) == nullptr);
  const BlockInfo* b = tier->acquire(key(1));
  REQUIRE(b != nullptr);
  CHECK(b->leases == 1);
  CHECK(std::to_integer<int>(tier->data(b->extent)[100]) == 1);
  CHECK(tier->usage().leased_blocks == 1);
  tier->release(b);
  CHECK(tier->usage().leased_blocks == 0);
  CHECK(tier->usage().used_bytes == 4096);
}

TEST_CASE("duplicate insert is refused and the extent stays reserved") {
  auto tier = make_tier(16 << 20);
  put(*tier, 1, 4096);
  auto ext = tier->reserve(4096);
  REQUIRE(ext.is_ok());
  CHECK(tier->insert(key(1), *ext, layout_of(4096)).code() == Errc::kAlreadyExists);
  CHECK(tier->usage().reserved_bytes == 4096);
  tier->unreserve(*ext);
  CHECK(tier->usage().reserved_bytes == 0);
}

TEST_CASE("eviction makes room but never touches a leased block") {
  auto tier = make_tier(16 << 20);
  const uint64_t sz = 1 << 20;
  put(*tier, 0, sz);
  const BlockInfo* pinned = tier->acquire(key(0));
  for (uint64_t i = 1; i < 64; ++i) put(*tier, i, sz);  // 4x the capacity
  CHECK(tier->find(key(0)) != nullptr);
  CHECK(std::to_integer<int>(tier->data(pinned->extent)[sz - 1]) == 0);
  CHECK(tier->usage().evictions > 0);
  CHECK(tier->usage().used_bytes <= tier->usage().capacity_bytes);
  tier->release(pinned);
}

TEST_CASE("a tier full of leased blocks reports no space") {
  auto tier = make_tier(16 << 20);
  const uint64_t sz = 1 << 20;
  std::vector<const BlockInfo*> leases;
  for (uint64_t i = 0;; ++i) {
    auto ext = tier->reserve(sz);
    if (!ext) {
      CHECK(ext.status().code() == Errc::kNoSpace);
      CHECK_THAT(ext.status().message(), Catch::Contains("leased"));
      break;
    }
    REQUIRE(tier->insert(key(i), *ext, layout_of(sz)).is_ok());
    leases.push_back(tier->acquire(key(i)));
    REQUIRE(i < 100);
  }
  CHECK(tier->usage().blocks == leases.size());  // nothing was lost
  for (auto* b : leases) tier->release(b);
  CHECK(tier->reserve(sz).is_ok());
}

TEST_CASE("removing a leased block is deferred to the last release") {
  auto tier = make_tier(16 << 20);
  put(*tier, 7, 8192);
  const BlockInfo* a = tier->acquire(key(7));
  const BlockInfo* b = tier->acquire(key(7));
  CHECK(tier->remove(key(7)) == RemoveOutcome::kDeferred);
  CHECK(tier->find(key(7)) == nullptr);
  CHECK(tier->usage().used_bytes == 8192);
  tier->release(a);
  CHECK(tier->usage().used_bytes == 8192);
  tier->release(b);
  CHECK(tier->usage().used_bytes == 0);
  CHECK(tier->remove(key(7)) == RemoveOutcome::kNotFound);
}

TEST_CASE("evict_matching skips leased blocks and counts them") {
  auto tier = make_tier(16 << 20);
  for (uint64_t i = 0; i < 4; ++i) put(*tier, i, 4096);
  const BlockInfo* b = tier->acquire(key(2));
  auto c = tier->evict_matching([](const NsKey&) { return true; });
  CHECK(c.evicted == 3);
  CHECK(c.skipped_leased == 1);
  CHECK(tier->usage().blocks == 1);
  tier->release(b);
}

TEST_CASE("oversized block is refused") {
  auto tier = make_tier(16 << 20);
  CHECK(tier->reserve(32 << 20).status().code() == Errc::kNoSpace);
}

TEST_CASE("the index grows past its first buckets and finds every block; shapes are shared") {
  auto tier = make_tier(16 << 20);
  const uint64_t n = 5000;  // 256 B slots: well inside 16 MiB, no eviction
  for (uint64_t i = 0; i < n; ++i) put(*tier, i, 64);
  CHECK(tier->usage().evictions == 0);
  for (uint64_t i = 0; i < n; ++i) REQUIRE(tier->find(key(i)) != nullptr);
  CHECK(tier->find(key(n)) == nullptr);
  ArenaTier::MemoryUsage m = tier->memory();
  CHECK(m.entries == n);
  CHECK(m.shapes == 1);  // one layout for every block
  CHECK(m.bucket_bytes >= n * sizeof(void*));
  CHECK(m.bucket_bytes <= 2 * n * sizeof(void*));
  for (uint64_t i = 0; i < n; i += 2) REQUIRE(tier->remove(key(i)) == RemoveOutcome::kRemoved);
  for (uint64_t i = 0; i < n; ++i) REQUIRE((tier->find(key(i)) != nullptr) == (i % 2 == 1));
  auto c = tier->evict_matching([](const NsKey& id) { return id.key.lo % 4 == 1; });
  CHECK(c.evicted == n / 4);
  CHECK(tier->usage().blocks == n / 4);
  CHECK(tier->memory().shapes == 1);
  tier->evict_matching([](const NsKey&) { return true; });
  CHECK(tier->memory().shapes == 0);  // the last block let go of it
  CHECK(tier->usage().used_bytes == 0);
}

TEST_CASE("a leased block's layout and checksums outlive its removal") {
  auto tier = make_tier(16 << 20);
  BlockLayout l;
  for (int i = 0; i < 3; ++i) {  // three tensors: checksums beyond the inline two
    TensorLayout t;
    t.name = i == 0 ? "k" : i == 1 ? "v" : "fusion/x";
    t.dtype = DType::kU8;
    t.shape = {64};
    t.offset = uint64_t(i) * 64;
    t.bytes = t.raw_bytes = 64;
    t.checksum = 0xabc0 + uint64_t(i);
    l.tensors.push_back(t);
  }
  l.total_bytes = 192;
  auto ext = tier->reserve(192);
  REQUIRE(ext.is_ok());
  REQUIRE(tier->insert(key(1), *ext, l).is_ok());
  CHECK(tier->usage().fusion_bytes == 64);
  const BlockInfo* b = tier->acquire(key(1));
  REQUIRE(b != nullptr);
  const LayoutView view = b->layout();
  CHECK(tier->remove(key(1)) == RemoveOutcome::kDeferred);
  // Put again under the same key with another shape: the removed block keeps its own.
  ext = tier->reserve(64);
  REQUIRE(ext.is_ok());
  REQUIRE(tier->insert(key(1), *ext, layout_of(64)).is_ok());
  CHECK(tier->memory().shapes == 2);
  REQUIRE(view.tensors().size() == 3);
  CHECK(view.tensors()[2].name == "fusion/x");
  for (size_t i = 0; i < 3; ++i) CHECK(view.checksum(i) == 0xabc0 + i);
  CHECK(view.has_fusion());
  CHECK_FALSE(tier->find(key(1))->layout().same_block(view));
  tier->release(b);
  CHECK(tier->memory().shapes == 1);
  CHECK(tier->usage().fusion_bytes == 0);
}
