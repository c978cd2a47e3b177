#include "tiers/gpu/gpu_tier.h"

#include <string>

#include "tiers/gpu/pool_allocator.h"

namespace kvtier {
namespace {

ArenaOptions arena_options(const GpuTier::Options& o) {
  ArenaOptions a;
  a.label = "gpu " + std::to_string(o.device) +
            (o.domain ? " (domain " + std::to_string(o.domain) + ")" : std::string());
  a.size_key = o.domain ? "arena.gpu_size" : "gpu.size";
  a.arena_id = GpuTier::pool_id(o.device, o.domain);
  a.small_ratio = o.small_ratio;
  a.ghost_entries = o.ghost_entries;
  return a;
}

}  // namespace

Result<std::unique_ptr<GpuTier>> GpuTier::create(gpu::DeviceBackend& backend,
                                                 const Options& options) {
  if (options.device < 0) {
    return error(Errc::kInvalidArgument, "gpu tier: device " + std::to_string(options.device));
  }
  auto pool = backend.create_pool(options.device, options.bytes, options.handle);
  if (!pool) {
    return error(pool.status().code(),
                 "gpu " + std::to_string(options.device) + " tier: " + pool.status().message());
  }
  return std::unique_ptr<GpuTier>(new GpuTier(std::move(pool).value(), options));
}

GpuTier::GpuTier(std::unique_ptr<gpu::DevicePool> pool, const Options& o)
    : ArenaTier(std::make_unique<gpu::PoolAllocator>(pool->size()), arena_options(o)),
      pool_(std::move(pool)),
      domain_(o.domain),
      uuid_(o.uuid) {}

GpuTier::~GpuTier() = default;

void GpuTier::set_evict_listener(EvictListener fn) {
  on_evict_ = std::move(fn);
}

void GpuTier::on_capacity_evict(const BlockInfo& block) {
  if (on_evict_) on_evict_(block);
}

gpu::DevicePool& GpuTier::pool() const {
  return *pool_;
}

int GpuTier::device() const {
  return pool_->device();
}

}  // namespace kvtier
