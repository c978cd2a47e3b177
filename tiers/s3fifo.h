// S3-FIFO eviction (Yang et al., SOSP'23) over byte-sized entries.
//
// Why S3-FIFO and not LRU: KV traffic is scan-heavy (long one-off prompts stream through
// once).  New entries enter a small FIFO (10% of the bytes); an entry that is hit again
// before it reaches the small queue's head moves to the main FIFO, the rest leave quickly
// and are remembered in a ghost FIFO of keys, so a returning key enters main directly.  A
// one-off scan therefore only churns the small queue and never flushes the hot working set,
// which plain LRU does.  Main is a FIFO with reinsertion (CLOCK-like, 2-bit frequency), so a
// hit costs an increment, not a list move under the lock.
//
// Pinned (leased) entries are never chosen: evict() rotates past them.
#pragma once

#include <boost/intrusive/list.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <unordered_set>

#include "tiers/tier.h"

namespace kvtier {

// What the policy keeps in each entry: its place in a queue and its frequency.  The entry's
// key and size are the entry's own (NodeTraits reads them), not repeated here.
struct S3FifoNode : boost::intrusive::list_base_hook<> {
  uint8_t freq = 0;  // 0..3, saturating
  bool in_main = false;
};

class S3Fifo {
 public:
  // How the policy reads a linked node's key (remembered as a ghost when it leaves the small
  // queue) and size in bytes, which must not change while it is linked.
  struct NodeTraits {
    const NsKey& (*key)(const S3FifoNode&);
    uint64_t (*bytes)(const S3FifoNode&);
  };
  // capacity_bytes: the tier's size; small_ratio: share of it for the small queue;
  // ghost_entries: keys remembered after leaving the small queue.
  S3Fifo(uint64_t capacity_bytes, double small_ratio, size_t ghost_entries, NodeTraits traits);

  void insert(S3FifoNode& node);  // a new entry: small queue, or main if its key is a ghost
  void touch(S3FifoNode& node) {
    if (node.freq < 3) ++node.freq;
  }
  void erase(S3FifoNode& node);  // removed by the user, not evicted (no ghost)
  void clear();                  // unlinks every node (before the nodes are destroyed)

  // Unlinks and returns the next victim, skipping nodes where pinned(node) is true; nullptr
  // when every entry is pinned.
  S3FifoNode* evict(const std::function<bool(const S3FifoNode&)>& pinned);

  size_t small_count() const { return small_.size(); }
  size_t main_count() const { return main_.size(); }
  uint64_t small_bytes() const { return small_bytes_; }
  uint64_t main_bytes() const { return main_bytes_; }
  bool is_ghost(const NsKey& key) const { return ghost_set_.count(key) > 0; }
  size_t ghost_count() const { return ghost_fifo_.size(); }  // at most ghost_entries

 private:
  using List = boost::intrusive::list<S3FifoNode, boost::intrusive::constant_time_size<true>>;
  void remember_ghost(const NsKey& key);
  void push(List& to, S3FifoNode& node);

  const uint64_t small_target_bytes_;
  const size_t ghost_capacity_;
  const NodeTraits traits_;
  List small_;
  List main_;
  uint64_t small_bytes_ = 0;
  uint64_t main_bytes_ = 0;
  std::deque<NsKey> ghost_fifo_;
  std::unordered_multiset<NsKey, NsKeyHash> ghost_set_;
};

}  // namespace kvtier
