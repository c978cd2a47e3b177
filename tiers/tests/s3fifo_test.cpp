#include <catch2/catch.hpp>

#include <memory>
#include <unordered_set>
#include <vector>

#include "tiers/s3fifo.h"

// Nodes are declared before the S3Fifo that links them: it must die first.

using namespace kvtier;

namespace {
// A tier's entry keeps its key and size itself; the policy reads them through NodeTraits.
struct Node : S3FifoNode {
  NsKey key;
  uint64_t bytes = 0;
};
constexpr S3Fifo::NodeTraits kTraits{
    [](const S3FifoNode& n) -> const NsKey& { return static_cast<const Node&>(n).key; },
    [](const S3FifoNode& n) { return static_cast<const Node&>(n).bytes; }};

std::vector<std::unique_ptr<Node>> make_nodes(size_t n, uint64_t bytes) {
  std::vector<std::unique_ptr<Node>> v;
  for (size_t i = 0; i < n; ++i) {
    auto node = std::make_unique<Node>();
    node->key = NsKey{1, BlockKey{i, 0}};
    node->bytes = bytes;
    v.push_back(std::move(node));
  }
  return v;
}
auto never = [](const S3FifoNode&) { return false; };
}  // namespace

TEST_CASE("new entries leave through the small queue first, in FIFO order") {
  auto nodes = make_nodes(10, 10);
  S3Fifo p(100, 0.1, 16, kTraits);
  for (auto& n : nodes) p.insert(*n);
  CHECK(p.small_count() == 10);
  CHECK(p.evict(never) == nodes[0].get());
  CHECK(p.is_ghost(nodes[0]->key));
  CHECK(p.evict(never) == nodes[1].get());
}

TEST_CASE("a hit in the small queue promotes to main; a ghost re-enters main") {
  auto nodes = make_nodes(3, 10);
  S3Fifo p(100, 0.1, 16, kTraits);
  for (auto& n : nodes) p.insert(*n);
  p.touch(*nodes[0]);
  CHECK(p.evict(never) == nodes[1].get());  // 0 was promoted, 1 is the victim
  CHECK(p.main_count() == 1);
  p.insert(*nodes[1]);  // its key is a ghost now
  CHECK(p.main_count() == 2);
  CHECK_FALSE(p.is_ghost(nodes[1]->key));
}

TEST_CASE("pinned entries are never chosen; all pinned yields nullptr") {
  auto nodes = make_nodes(4, 10);
  S3Fifo p(100, 0.1, 16, kTraits);
  for (auto& n : nodes) p.insert(*n);
  std::unordered_set<const S3FifoNode*> pinned = {nodes[0].get(), nodes[1].get()};
  auto is_pinned = [&](const S3FifoNode& n) { return pinned.count(&n) > 0; };
  CHECK(p.evict(is_pinned) == nodes[2].get());
  CHECK(p.evict(is_pinned) == nodes[3].get());
  CHECK(p.evict(is_pinned) == nullptr);
  CHECK(p.small_count() == 2);  // pinned ones are still queued
}

TEST_CASE("a small queue over its share but all pinned falls through to main") {
  auto nodes = make_nodes(2, 10);
  S3Fifo p(100, 0.1, 16, kTraits);  // small target: 10 bytes
  p.insert(*nodes[0]);
  p.touch(*nodes[0]);
  p.insert(*nodes[1]);
  // 0 is promoted (small is over target), 1 is pinned in small, so main's 0 is the victim.
  auto pin1 = [&](const S3FifoNode& n) { return &n == nodes[1].get(); };
  CHECK(p.evict(pin1) == nodes[0].get());
  CHECK(p.evict(pin1) == nullptr);
}

TEST_CASE("a one-off scan does not flush the hot set (scan resistance)") {
  // Hot set: 5 entries accessed repeatedly; then a scan of 200 one-off entries through a
  // cache of 20 entries.  Under S3-FIFO the hot entries survive; under LRU none would.
  const uint64_t cap = 20;
  auto hot = make_nodes(5, 1);
  std::vector<std::unique_ptr<Node>> scan;
  S3Fifo p(cap, 0.1, 64, kTraits);
  size_t live = 0;
  std::unordered_set<S3FifoNode*> present;
  auto admit = [&](S3FifoNode& n) {
    while (live >= cap) {
      auto* v = p.evict(never);
      REQUIRE(v != nullptr);
      present.erase(v);
      --live;
    }
    p.insert(n);
    present.insert(&n);
    ++live;
  };
  for (auto& h : hot) admit(*h);
  for (int round = 0; round < 3; ++round)
    for (auto& h : hot) p.touch(*h);
  for (size_t i = 0; i < 200; ++i) {
    auto n = std::make_unique<Node>();
    n->key = NsKey{2, BlockKey{i, 1}};
    n->bytes = 1;
    admit(*n);
    scan.push_back(std::move(n));
    if (i % 10 == 0)
      for (auto& h : hot)
        if (present.count(h.get())) p.touch(*h);
  }
  size_t hot_left = 0;
  for (auto& h : hot) hot_left += present.count(h.get());
  CHECK(hot_left == 5);
}
