// The host tier: sealed blocks in one shared-memory arena (one per isolation domain), S3-FIFO
// eviction, leases that pin (the index, policy and leases are ArenaTier's, shared with the GPU
// tier). Not thread-safe (see tiers/tier.h): the engine serialises calls.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "tiers/arena_tier.h"
#include "tiers/host/shm_arena.h"

namespace kvtier {

class HostTier final : public ArenaTier {
 public:
  struct Options {
    std::string shm_name = "kvtier-host-0";
    uint32_t arena_id = 0;  // Extent::arena of its blocks (the isolation domain's index)
    uint64_t bytes = 64ull << 20;
    bool prefault = false;
    double small_ratio = 0.10;
    size_t ghost_entries = 0;  // 0: one per 64 KiB of capacity
  };
  static Result<std::unique_ptr<HostTier>> create(const Options& options);
  ~HostTier() override;

  TierKind kind() const override { return TierKind::kHost; }
  const char* name() const override { return "host"; }

  // Called for each block that capacity eviction (reserve()) removes, with its bytes, just
  // before they are freed: the daemon demotes it to the disk tier here.  Admin eviction and
  // remove() do not call it.
  using EvictListener = std::function<void(const BlockInfo&, std::span<const std::byte>)>;
  void set_evict_listener(EvictListener fn) { on_evict_ = std::move(fn); }

  // The arena's memory, for the daemon to copy sealed bytes into a reserved extent.
  std::byte* data(const Extent& extent) const { return arena_->base() + extent.offset; }
  const ShmArena& arena() const { return *arena_; }

 private:
  HostTier(std::unique_ptr<ShmArena> arena, const Options& options);
  void on_capacity_evict(const BlockInfo& block) override;

  ShmArena* const arena_;  // owned by ArenaTier as its SpaceAllocator
  EvictListener on_evict_;
};

}  // namespace kvtier
