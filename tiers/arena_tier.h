// The logic every tier that keeps its blocks in one arena of bytes shares: the index, S3-FIFO
// eviction, leases that pin, blocks removed while leased ("doomed") and the usage counters.
// HostTier (a shared-memory arena) and GpuTier (a device pool) derive from it and add only
// their memory and their evict listener.
//
// Not thread-safe (see tiers/tier.h): the engine serialises calls.
#pragma once

#include <boost/intrusive/unordered_set.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "tiers/layout_table.h"
#include "tiers/s3fifo.h"
#include "tiers/space_allocator.h"
#include "tiers/tier.h"

namespace kvtier {

struct ArenaOptions {
  std::string label;      // names the tier in messages: "host", "gpu 0"
  std::string size_key;   // the setting that sizes it, for "grow ..." hints: "host.size"
  uint32_t arena_id = 0;  // Extent::arena of its blocks
  double small_ratio = 0.10;
  size_t ghost_entries = 0;  // 0: one per 64 KiB of capacity
};

class ArenaTier : public MemoryTier {
 public:
  ~ArenaTier() override;

  Result<Extent> reserve(uint64_t bytes) override;
  void unreserve(const Extent& extent) override;
  Status insert(const NsKey& id, const Extent& extent, BlockLayout layout) override;
  const BlockInfo* find(const NsKey& id) const override;
  const BlockInfo* acquire(const NsKey& id) override;
  void release(const BlockInfo* block) override;
  RemoveOutcome remove(const NsKey& id) override;
  EvictCount evict_matching(const std::function<bool(const NsKey&)>& match) override;
  TierUsage usage() const override;
  void visit(const std::function<void(const BlockInfo&)>& fn) const override;

  // Extent::arena of this tier's blocks.
  uint32_t arena_id() const { return arena_id_; }

  // What this tier's bookkeeping holds in daemon memory (docs/internals.md, "Memory per
  // block"): the figures block_memory_bench prints beside what it measures.
  struct MemoryUsage {
    uint64_t entries = 0;       // blocks indexed, plus doomed ones not yet freed
    uint64_t entry_bytes = 0;   // sizeof one entry (one allocation per block)
    uint64_t bucket_bytes = 0;  // the index's bucket array
    uint64_t shapes = 0;        // distinct interned layouts
    uint64_t shape_bytes = 0;   // their heap (LayoutTable::heap_bytes)
    uint64_t ghosts = 0;        // keys in the S3-FIFO ghost queue (bounded by its length)
  };
  MemoryUsage memory() const;

 protected:
  ArenaTier(std::unique_ptr<SpaceAllocator> space, const ArenaOptions& options);
  SpaceAllocator& space() const { return *space_; }

  // Capacity eviction (reserve()) is removing `block`; its bytes are still intact and are
  // freed when this returns.  Admin eviction and remove() do not call it.
  virtual void on_capacity_evict(const BlockInfo& block) = 0;

 private:
  // One allocation per block: its place in the S3-FIFO queues, its link in the index's bucket
  // chain and its BlockInfo (docs/internals.md, "Memory per block").
  struct Entry : S3FifoNode, boost::intrusive::unordered_set_base_hook<>, BlockInfo {
    using BlockInfo::BlockInfo;
  };
  struct EntryId {
    using type = NsKey;
    const NsKey& operator()(const Entry& e) const { return e.id; }
  };
  // NsKeyHash, finished so that its low bits (the bucket of a power-of-two table) are mixed.
  struct IndexHash {
    size_t operator()(const NsKey& k) const noexcept {
      uint64_t h = NsKeyHash{}(k);
      h ^= h >> 32;
      h *= 0x9e3779b97f4a7c15ull;
      return h ^ (h >> 29);
    }
  };
  // Intrusive: the entries are the chain nodes, so the index adds one pointer per entry and
  // one bucket pointer per slot of its table (at most one entry per bucket on average, grown
  // by doubling).  It owns its entries: they are created in insert() and deleted when freed.
  using Index = boost::intrusive::unordered_set<
      Entry, boost::intrusive::key_of_value<EntryId>, boost::intrusive::hash<IndexHash>,
      boost::intrusive::power_2_buckets<true>, boost::intrusive::constant_time_size<true>>;
  static constexpr size_t kMinBuckets = 64;

  std::unique_ptr<Entry> unindex(Entry& e);  // out of the index; the caller owns it now
  void free_entry(Entry& e);  // returns its bytes to the arena and updates the counters
  void grow_index();          // twice the buckets, once the entries outnumber them

  // Constant after construction.
  const std::unique_ptr<SpaceAllocator> space_;
  const std::string label_;
  const std::string size_key_;
  const uint32_t arena_id_;

  S3Fifo policy_;
  LayoutTable layouts_;  // the shapes of this tier's blocks, doomed ones included
  std::unique_ptr<Index::bucket_type[]> buckets_;
  Index index_;
  // Removed while leased: out of the index, freed at the last release.
  std::unordered_map<const BlockInfo*, std::unique_ptr<Entry>> doomed_;
  uint64_t used_bytes_ = 0;
  uint64_t raw_bytes_ = 0;
  uint64_t fusion_bytes_ = 0;
  uint64_t reserved_bytes_ = 0;
  uint64_t leased_blocks_ = 0;
  uint64_t evictions_ = 0;
  uint64_t evicted_bytes_ = 0;
};

}  // namespace kvtier
