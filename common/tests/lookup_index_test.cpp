#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include "common/lookup_index.h"

using namespace kvtier;

namespace {

std::unique_ptr<LookupIndex> make_index(uint64_t slots, uint64_t max_slots) {
  LookupIndex::Options o;
  o.domain = 3;
  o.instance = BlockKey{7, 8};
  o.slots = slots;
  o.max_slots = max_slots;
  auto idx = LookupIndex::create(o);
  REQUIRE(idx.is_ok());
  return std::move(idx).value();
}

std::unique_ptr<LookupIndexView> map_view(const LookupIndex& idx) {
  auto fd = idx.open_readonly_fd();
  REQUIRE(fd.is_ok());
  auto v = LookupIndexView::map(*fd);
  ::close(*fd);
  REQUIRE(v.is_ok());
  return std::move(v).value();
}

// Keys whose hi is derived from lo, so a reader can tell a torn entry (a lo of one key with
// the hi of another) from a whole one.
BlockKey key_of(uint64_t i) {
  const uint64_t lo = i * 0x9E3779B97F4A7C15ull + 1;
  return BlockKey{lo, ~lo ^ 0x5555};
}

}  // namespace

TEST_CASE("lookup index: updates are seen through a read-only mapping, per namespace") {
  auto idx = make_index(64, 1024);
  auto v = map_view(*idx);
  CHECK(v->domain() == 3);
  CHECK(v->generation() == 1);
  CHECK(v->retired() == kIndexLive);
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 8; ++i) chain.push_back(key_of(i));
  for (uint64_t i = 0; i < 5; ++i) idx->update(1, chain[i], kIndexHost, kIndexHost);
  idx->update(1, chain[6], kIndexHost, kIndexHost);
  CHECK(v->prefix(1, chain) == 5);
  CHECK(v->prefix(2, chain) == 0);  // the same keys in another namespace are not there
  CHECK(v->prefix(0, chain) == 0);
  // Bits are kept per tier: the host bit cleared, the disk bit set, the block still listed.
  idx->update(1, chain[2], kIndexDisk, kIndexDisk);
  idx->update(1, chain[2], kIndexHost, 0);
  CHECK(v->bits(1, chain[2]) == kIndexDisk);
  CHECK(v->prefix(1, chain) == 5);
  CHECK(v->prefix(1, chain, kIndexHost) == 2);
  idx->update(1, chain[2], kIndexDisk, 0);  // a tombstone now
  CHECK(v->prefix(1, chain) == 2);
  CHECK(idx->stats().live == 5);
  // The tombstone's slot is reused; the chain is whole again.
  idx->update(1, chain[2], kIndexGpu, kIndexGpu);
  CHECK(v->prefix(1, chain) == 5);
  // A read-only descriptor cannot be mapped for writing.
  auto fd = idx->open_readonly_fd();
  REQUIRE(fd.is_ok());
  CHECK(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0) == MAP_FAILED);
  ::close(*fd);
}

TEST_CASE("lookup index: a bad header is refused") {
  int fd = ::memfd_create("not-an-index", MFD_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, 4096 + 64 * 32) == 0);
  auto v = LookupIndexView::map(fd);
  CHECK(v.status().code() == Errc::kProtocol);
  ::close(fd);
}

TEST_CASE("lookup index: when full it grows into a new memfd and retires the old one") {
  auto idx = make_index(64, 256);
  auto v1 = map_view(*idx);
  // 48 entries fill 3/4 of 64 slots; the 49th publishes generation 2 with 128 slots.
  for (uint64_t i = 0; i < 49; ++i) idx->update(4, key_of(i), kIndexHost, kIndexHost);
  CHECK(v1->retired() == kIndexReplaced);
  auto v2 = map_view(*idx);
  CHECK(v2->generation() == 2);
  CHECK(v2->slots() == 128);
  CHECK(idx->stats().resizes == 1);
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 49; ++i) keys.push_back(key_of(i));
  CHECK(v2->prefix(4, keys) == 49);
  // At max_slots (256: 192 entries) further keys are dropped and counted, never misplaced.
  for (uint64_t i = 49; i < 300; ++i) idx->update(4, key_of(i), kIndexHost, kIndexHost);
  auto v3 = map_view(*idx);
  CHECK(v3->slots() == 256);
  const auto st = idx->stats();
  CHECK(st.live == 192);
  CHECK(st.dropped == 300 - 192);
  keys.clear();
  for (uint64_t i = 0; i < 300; ++i) keys.push_back(key_of(i));
  CHECK(v3->prefix(4, keys) == 192);
  // Removing entries makes room again: tombstones are reused or swept by a same-size rebuild.
  for (uint64_t i = 0; i < 100; ++i) idx->update(4, key_of(i), kIndexHost, 0);
  for (uint64_t i = 192; i < 280; ++i) idx->update(4, key_of(i), kIndexHost, kIndexHost);
  auto v4 = map_view(*idx);
  CHECK(v4->slots() == 256);
  CHECK(idx->stats().live == 92 + 88);
  for (uint64_t i = 100; i < 280; ++i) CHECK(v4->bits(4, key_of(i)) == kIndexHost);
  // The daemon going away marks the current memfd stopped.
  idx->retire();
  CHECK(v4->retired() == kIndexStopped);
}

// Writers and readers on threads: every entry a reader sees is whole (hi matches lo, bits
// are one of the values written), and a namespace never shows another's keys.
TEST_CASE("lookup index: concurrent writer and readers never see a torn entry") {
  auto idx = make_index(256, 4096);
  constexpr uint64_t kKeys = 1500;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> torn{0}, foreign{0}, reads{0};
  std::thread writer([&] {
    // At least 40 rounds, and on until the readers have read enough entries (a slow start).
    for (int round = 0; round < 40 || (reads < 50000 && round < 20000); ++round)
      for (uint64_t i = 0; i < kKeys; ++i) {
        // Namespace 1 holds the even keys only; namespace 2 the odd ones.
        const uint32_t ns = (i & 1) ? 2 : 1;
        const uint32_t bits = (round + i) % 3 == 0 ? 0 : ((round & 1) ? kIndexHost : kIndexDisk);
        idx->update(ns, key_of(i), kIndexHost | kIndexDisk, bits);
      }
    stop = true;
  });
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&] {
      while (!stop) {
        auto fd = idx->open_readonly_fd();
        if (!fd) continue;
        auto v = LookupIndexView::map(*fd);
        ::close(*fd);
        if (!v) continue;
        for (int pass = 0; pass < 4 && (*v)->retired() == kIndexLive; ++pass) {
          for (uint64_t s = 0; s < (*v)->slots(); ++s) {
            IndexEntrySnapshot e = (*v)->entry(s);
            if (e.ns == 0) continue;
            ++reads;
            if (e.hi != (~e.lo ^ 0x5555) || (e.bits & ~(kIndexHost | kIndexDisk)) != 0) ++torn;
            // lo = i * golden + 1: recover i's parity through the namespace rule.
            const uint64_t i = (e.lo - 1) * 0xF1DE83E19937733Dull;  // golden^-1 mod 2^64
            if (((i & 1) ? 2u : 1u) != e.ns - 1) ++foreign;
          }
          for (uint64_t i = 0; i < kKeys; i += 2)
            if ((*v)->bits(2, key_of(i)) != 0) ++foreign;
        }
      }
    });
  writer.join();
  for (auto& t : readers) t.join();
  CHECK(reads > 0);
  CHECK(torn == 0);
  CHECK(foreign == 0);
  CHECK(idx->stats().resizes >= 1);
}

TEST_CASE("liveness page: alive while its holder runs, gone after, also when the owner dies") {
  std::unique_ptr<LivenessView> view;
  {
    auto live = DaemonLiveness::create();
    REQUIRE(live.is_ok());
    auto fd = (*live)->open_readonly_fd();
    REQUIRE(fd.is_ok());
    // Read-only: a writable mapping of the reader's descriptor is refused.
    CHECK(::mmap(nullptr, kLivenessBytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0) ==
          MAP_FAILED);
    auto v = LivenessView::map(*fd);
    ::close(*fd);
    REQUIRE(v.is_ok());
    view = std::move(v).value();
    CHECK(view->alive());
  }
  CHECK(!view->alive());  // the daemon's side went away cleanly

  // A process that dies holding it (SIGKILL): the kernel clears the owner.
  int to_parent[2];
  REQUIRE(::pipe(to_parent) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto live = DaemonLiveness::create();
    int fd = live ? (*live)->open_readonly_fd().value() : -1;
    (void)!::write(to_parent[1], &fd, sizeof fd);
    ::pause();
    ::_exit(0);
  }
  int child_fd = -1;
  REQUIRE(::read(to_parent[0], &child_fd, sizeof child_fd) == sizeof child_fd);
  REQUIRE(child_fd >= 0);
  const std::string path = "/proc/" + std::to_string(child) + "/fd/" + std::to_string(child_fd);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto v = LivenessView::map(fd);
  ::close(fd);
  REQUIRE(v.is_ok());
  CHECK((*v)->alive());
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(!(*v)->alive());
  ::close(to_parent[0]);
  ::close(to_parent[1]);
}
