#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "tiers/gpu/pool_allocator.h"

using kvtier::Errc;
using kvtier::gpu::PoolAllocator;

namespace {
constexpr uint64_t kA = PoolAllocator::kAlignment;
}

TEST_CASE("pool allocator: offsets and sizes are aligned") {
  PoolAllocator a(1 << 20);
  for (uint64_t bytes : {1ull, 17ull, 255ull, 256ull, 257ull, 1000ull, 4096ull}) {
    auto off = a.allocate(bytes);
    REQUIRE(off.is_ok());
    CHECK(*off % kA == 0);
  }
  // 1, 17 and 255 take one unit each, 257 and 1000 round up: 3*256 + 256 + 512 + 1024 + 4096.
  CHECK(a.free_bytes() == (1 << 20) - (3 * kA + kA + 2 * kA + 4 * kA + 16 * kA));
  CHECK(a.allocate(0).status().code() == Errc::kInvalidArgument);
}

TEST_CASE("pool allocator: a tail shorter than the alignment is never handed out") {
  PoolAllocator a(10 * kA + 100);
  CHECK(a.size() == 10 * kA + 100);
  CHECK(a.free_bytes() == 10 * kA);
  REQUIRE(a.allocate(10 * kA).is_ok());
  CHECK(a.allocate(1).status().code() == Errc::kNoSpace);
}

TEST_CASE("pool allocator: exhaustion, then space again after a free") {
  PoolAllocator a(16 * kA);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 16; ++i) {
    auto off = a.allocate(kA);
    REQUIRE(off.is_ok());
    offs.push_back(*off);
  }
  auto full = a.allocate(1);
  CHECK(full.status().code() == Errc::kNoSpace);
  CHECK_THAT(full.status().message(), Catch::Contains("largest 0"));
  CHECK(a.allocate(17 * kA).status().code() == Errc::kNoSpace);  // larger than the pool
  a.deallocate(offs[7]);
  auto again = a.allocate(kA);
  REQUIRE(again.is_ok());
  CHECK(*again == offs[7]);
}

TEST_CASE("pool allocator: best fit picks the smallest hole, lowest offset among equals") {
  PoolAllocator a(64 * kA);
  // Layout: [0,4) used, [4,12) hole of 8, [12,13) used, [13,15) hole of 2, [15,16) used,
  // [16,18) hole of 2, [18,19) used, rest free (45 units).
  uint64_t u0 = *a.allocate(4 * kA);
  uint64_t h8 = *a.allocate(8 * kA);
  uint64_t u1 = *a.allocate(kA);
  uint64_t h2a = *a.allocate(2 * kA);
  uint64_t u2 = *a.allocate(kA);
  uint64_t h2b = *a.allocate(2 * kA);
  uint64_t u3 = *a.allocate(kA);
  a.deallocate(h8);
  a.deallocate(h2a);
  a.deallocate(h2b);
  CHECK(a.free_ranges() == 4);
  CHECK(*a.allocate(2 * kA) == h2a);  // exact fit, lower of the two
  CHECK(*a.allocate(kA + 1) == h2b);  // rounds to 2 units: the other exact fit
  CHECK(*a.allocate(3 * kA) == h8);   // smallest hole that fits is the 8-unit one
  CHECK(*a.allocate(5 * kA) == h8 + 3 * kA);
  CHECK(a.free_ranges() == 1);
  (void)u0, (void)u1, (void)u2, (void)u3;
}

TEST_CASE("pool allocator: frees coalesce with both neighbours") {
  PoolAllocator a(8 * kA);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 8; ++i) offs.push_back(*a.allocate(kA));
  a.deallocate(offs[1]);
  a.deallocate(offs[3]);
  CHECK(a.free_ranges() == 2);
  CHECK(a.largest_free() == kA);
  a.deallocate(offs[2]);  // joins [1] and [3]
  CHECK(a.free_ranges() == 1);
  CHECK(a.largest_free() == 3 * kA);
  a.deallocate(offs[0]);  // joins on the left edge of the pool
  a.deallocate(offs[7]);
  a.deallocate(offs[6]);  // joins [7] at the right edge
  CHECK(a.free_ranges() == 2);
  a.deallocate(offs[4]);
  a.deallocate(offs[5]);
  CHECK(a.free_ranges() == 1);
  CHECK(a.largest_free() == 8 * kA);
  CHECK(a.free_bytes() == 8 * kA);
  CHECK(a.allocations() == 0);
}

TEST_CASE("pool allocator: fragmentation refuses a fitting total, freeing merges it back") {
  PoolAllocator a(32 * kA);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 32; ++i) offs.push_back(*a.allocate(kA));
  for (int i = 0; i < 32; i += 2) a.deallocate(offs[i]);  // every other unit
  CHECK(a.free_bytes() == 16 * kA);
  CHECK(a.largest_free() == kA);
  CHECK(a.allocate(2 * kA).status().code() == Errc::kNoSpace);
  a.deallocate(offs[1]);
  CHECK(a.largest_free() == 3 * kA);
  CHECK(a.allocate(3 * kA).is_ok());
}

TEST_CASE("pool allocator: a double or unknown free is ignored and counted") {
  PoolAllocator a(8 * kA);
  uint64_t off = *a.allocate(kA);
  a.deallocate(off);
  a.deallocate(off);
  a.deallocate(3 * kA);
  CHECK(a.bad_frees() == 2);
  CHECK(a.free_bytes() == 8 * kA);
  CHECK(a.free_ranges() == 1);
}

TEST_CASE("pool allocator: random churn keeps the books balanced") {
  PoolAllocator a(1 << 20);
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, uint64_t>> live;  // offset, rounded bytes
  uint64_t used = 0;
  for (int step = 0; step < 20000; ++step) {
    if (!live.empty() && (rng() % 3 == 0 || a.free_bytes() < 8192)) {
      size_t i = rng() % live.size();
      a.deallocate(live[i].first);
      used -= live[i].second;
      live[i] = live.back();
      live.pop_back();
    } else {
      uint64_t bytes = 1 + rng() % 8192;
      auto off = a.allocate(bytes);
      if (!off) continue;
      uint64_t rounded = (bytes + kA - 1) / kA * kA;
      bool overlaps = false;
      for (const auto& [o, b] : live) overlaps |= !(*off + rounded <= o || o + b <= *off);
      REQUIRE(!overlaps);
      REQUIRE(*off % kA == 0);
      live.emplace_back(*off, rounded);
      used += rounded;
    }
    if (a.free_bytes() + used != a.size()) FAIL("free + used != size at step " << step);
  }
  for (const auto& [o, b] : live) a.deallocate(o);
  CHECK(a.free_ranges() == 1);
  CHECK(a.free_bytes() == a.size());
}
