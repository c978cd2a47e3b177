#include "tiers/host/host_tier.h"

namespace kvtier {
namespace {

ArenaOptions arena_options(const HostTier::Options& o) {
  ArenaOptions a;
  a.label = "host";
  a.size_key = "host.size";
  a.arena_id = o.arena_id;
  a.small_ratio = o.small_ratio;
  a.ghost_entries = o.ghost_entries;
  return a;
}

}  // namespace

Result<std::unique_ptr<HostTier>> HostTier::create(const Options& options) {
  auto arena = ShmArena::create(options.shm_name, options.bytes, options.prefault);
  if (!arena) return arena.status();
  return std::unique_ptr<HostTier>(new HostTier(std::move(arena).value(), options));
}

HostTier::HostTier(std::unique_ptr<ShmArena> arena, const Options& o)
    : ArenaTier(std::move(arena), arena_options(o)), arena_(&static_cast<ShmArena&>(space())) {}

HostTier::~HostTier() = default;

void HostTier::on_capacity_evict(const BlockInfo& block) {
  if (on_evict_) on_evict_(block, {data(block.extent), block.extent.bytes});
}

}  // namespace kvtier
