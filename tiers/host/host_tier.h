// The host tier: sealed blocks in one shared-memory arena, S3-FIFO eviction, leases that pin.
// Not thread-safe (see tiers/tier.h): the daemon's Cache serialises calls.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>

#include "tiers/host/s3fifo.h"
#include "tiers/host/shm_arena.h"
#include "tiers/tier.h"

namespace kvtier {

class HostTier final : public Tier {
 public:
  struct Options {
    std::string shm_name = "kvtier-host-0";
    uint64_t bytes = 64ull << 20;
    bool prefault = false;
    double small_ratio = 0.10;
    size_t ghost_entries = 0;  // 0: one per 64 KiB of capacity
  };
  static Result<std::unique_ptr<HostTier>> create(const Options& options);
  ~HostTier() override;

  TierKind kind() const override { return TierKind::kHost; }
  const char* name() const override { return "host"; }
  Result<Extent> reserve(uint64_t bytes) override;
  void unreserve(const Extent& extent) override;
  Status insert(const NsKey& id, const Extent& extent, BlockLayout layout) override;
  const BlockInfo* find(const NsKey& id) const override;
  const BlockInfo* acquire(const NsKey& id) override;
  void release(const BlockInfo* block) override;
  RemoveOutcome remove(const NsKey& id) override;
  EvictCount evict_matching(const std::function<bool(const BlockInfo&)>& match) override;
  TierUsage usage() const override;
  void visit(const std::function<void(const BlockInfo&)>& fn) const override;

  // Called for each block that capacity eviction (reserve()) removes, with its bytes, just
  // before they are freed: the daemon demotes it to the disk tier here.  Admin eviction and
  // remove() do not call it.
  using EvictListener = std::function<void(const BlockInfo&, std::span<const std::byte>)>;
  void set_evict_listener(EvictListener fn) { on_evict_ = std::move(fn); }

  // The arena's memory, for the daemon to copy sealed bytes into a reserved extent.
  std::byte* data(const Extent& extent) const { return arena_->base() + extent.offset; }
  const ShmArena& arena() const { return *arena_; }
  uint32_t arena_id() const { return 0; }

 private:
  struct Entry : S3FifoNode {
    BlockInfo info;
  };
  HostTier(std::unique_ptr<ShmArena> arena, const Options& options);
  void free_entry(Entry& e);  // returns its bytes to the arena and updates the counters

  std::unique_ptr<ShmArena> arena_;
  EvictListener on_evict_;
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
