// The logic every tier that keeps its blocks in one arena of bytes shares: the index, S3-FIFO
// eviction, leases that pin, blocks removed while leased ("doomed") and the usage counters.
// HostTier (a shared-memory arena) and GpuTier (a device pool) derive from it and add only
// their memory and their evict listener.
//
// Not thread-safe (see tiers/tier.h): the engine serialises calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

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

 protected:
  ArenaTier(std::unique_ptr<SpaceAllocator> space, const ArenaOptions& options);
  SpaceAllocator& space() const { return *space_; }

  // Capacity eviction (reserve()) is removing `block`; its bytes are still intact and are
  // freed when this returns.  Admin eviction and remove() do not call it.
  virtual void on_capacity_evict(const BlockInfo& block) = 0;

 private:
  struct Entry : S3FifoNode {
    BlockInfo info;
  };
  void free_entry(Entry& e);  // returns its bytes to the arena and updates the counters

  // Constant after construction.
  const std::unique_ptr<SpaceAllocator> space_;
  const std::string label_;
  const std::string size_key_;
  const uint32_t arena_id_;

  S3Fifo policy_;
  std::unordered_map<NsKey, std::unique_ptr<Entry>, NsKeyHash> index_;
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
