// The hot tier: sealed blocks in one DevicePool per GPU (fp16/bf16 as given, bit-exact),
// S3-FIFO eviction, leases that pin (the index, policy and leases are ArenaTier's, shared
// with the host tier).  A MemoryTier (tiers/tier.h): not thread-safe, the engine serialises
// calls; the pool itself is thread-safe, so the engine copies bytes into a reserved extent
// without holding its lock.
//
// Space inside a pool is handed out by a PoolAllocator (tiers/gpu/pool_allocator.h): best
// fit over offsets, kept in host memory because device memory cannot hold the allocator's
// bookkeeping.  A region is never reused while any lease on its block is held.
#pragma once

#include <functional>
#include <memory>

#include "tiers/arena_tier.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier {

class GpuTier final : public ArenaTier {
 public:
  struct Options {
    int device = 0;
    uint64_t bytes = 256ull << 20;  // rounded up to the device's allocation granularity
    gpu::HandleType handle = gpu::HandleType::kMemfd;
    double small_ratio = 0.10;
    size_t ghost_entries = 0;  // 0: one per 64 KiB of capacity
    // The isolation domain whose blocks this pool holds (0: the default, shared one).  Its
    // pool id (Extent::arena of its blocks) is pool_id(device, domain).
    uint32_t domain = 0;
    gpu::DeviceUuid uuid{};  // the device's (DeviceInfo::uuid), sent to clients in the hello
  };
  // Pool ids: the device index for the default domain, as before isolation domains existed.
  static uint32_t pool_id(int device, uint32_t domain) {
    return (domain << 16) | static_cast<uint32_t>(device);
  }
  // Creates the device's pool through `backend` (which must outlive the tier).
  static Result<std::unique_ptr<GpuTier>> create(gpu::DeviceBackend& backend,
                                                 const Options& options);
  ~GpuTier() override;

  TierKind kind() const override { return TierKind::kGpu; }
  const char* name() const override { return "gpu"; }

  // Called for each block that capacity eviction (reserve()) removes, just before its extent
  // is freed (its bytes in the pool are still intact): the daemon demotes it to the host tier
  // here.  Admin eviction and remove() do not call it.
  using EvictListener = std::function<void(const BlockInfo&)>;
  void set_evict_listener(EvictListener fn);

  gpu::DevicePool& pool() const;
  int device() const;
  uint32_t domain() const { return domain_; }
  const gpu::DeviceUuid& uuid() const { return uuid_; }
  // Extent::arena of this tier's blocks: pool_id(device, domain) (ArenaTier::arena_id()).

 private:
  GpuTier(std::unique_ptr<gpu::DevicePool> pool, const Options& options);
  void on_capacity_evict(const BlockInfo& block) override;

  const std::unique_ptr<gpu::DevicePool> pool_;
  const uint32_t domain_;
  const gpu::DeviceUuid uuid_;
  EvictListener on_evict_;
};

}  // namespace kvtier
