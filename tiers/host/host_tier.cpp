#include "tiers/host/host_tier.h"

#include <chrono>

namespace kvtier {
namespace {

uint64_t now_unix_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string mib(uint64_t bytes) {
  return std::to_string(bytes >> 20) + " MiB";
}

}  // namespace

Result<std::unique_ptr<HostTier>> HostTier::create(const Options& options) {
  auto arena = ShmArena::create(options.shm_name, options.bytes, options.prefault);
  if (!arena) return arena.status();
  return std::unique_ptr<HostTier>(new HostTier(std::move(arena).value(), options));
}

HostTier::HostTier(std::unique_ptr<ShmArena> arena, const Options& o)
    : arena_(std::move(arena)),
      policy_(o.bytes, o.small_ratio,
              o.ghost_entries ? o.ghost_entries : std::max<size_t>(64, o.bytes >> 16)) {}

HostTier::~HostTier() {
  policy_.clear();
}

Result<Extent> HostTier::reserve(uint64_t bytes) {
  if (bytes == 0 || bytes > arena_->size())
    return error(Errc::kNoSpace, "block of " + std::to_string(bytes) +
                                     " bytes does not fit the host tier (" + mib(arena_->size()) +
                                     ")");
  for (;;) {
    auto off = arena_->allocate(bytes);
    if (off) {
      reserved_bytes_ += bytes;
      return Extent{arena_id(), off.value(), bytes};
    }
    auto* victim = policy_.evict(
        [](const S3FifoNode& n) { return static_cast<const Entry&>(n).info.leases > 0; });
    if (victim == nullptr) {
      return error(Errc::kNoSpace, "host tier full: " + std::to_string(leased_blocks_) + " of " +
                                       std::to_string(index_.size()) + " blocks leased, " +
                                       mib(reserved_bytes_) + " reserved by unsealed puts, " +
                                       mib(arena_->free_bytes()) + " free of " +
                                       mib(arena_->size()) + "; release leases or grow host.size");
    }
    auto& e = static_cast<Entry&>(*victim);
    if (on_evict_) on_evict_(e.info, {data(e.info.extent), e.info.extent.bytes});
    ++evictions_;
    evicted_bytes_ += e.info.extent.bytes;
    auto node = index_.extract(e.info.id);
    free_entry(e);
  }
}

void HostTier::unreserve(const Extent& extent) {
  reserved_bytes_ -= extent.bytes;
  arena_->deallocate(extent.offset);
}

Status HostTier::insert(const NsKey& id, const Extent& extent, BlockLayout layout) {
  if (index_.count(id)) return error(Errc::kAlreadyExists, "block " + id.key.hex() + " exists");
  auto e = std::make_unique<Entry>();
  e->key = id;
  e->bytes = extent.bytes;
  e->info.id = id;
  e->info.extent = extent;
  e->info.layout = std::move(layout);
  e->info.created_unix_ms = e->info.last_access_unix_ms = now_unix_ms();
  reserved_bytes_ -= extent.bytes;
  used_bytes_ += extent.bytes;
  for (const auto& t : e->info.layout.tensors) {
    raw_bytes_ += t.raw_bytes;
    if (is_fusion_tensor(t.name)) fusion_bytes_ += t.bytes;
  }
  policy_.insert(*e);
  index_.emplace(id, std::move(e));
  return {};
}

void HostTier::free_entry(Entry& e) {
  used_bytes_ -= e.info.extent.bytes;
  for (const auto& t : e.info.layout.tensors) {
    raw_bytes_ -= t.raw_bytes;
    if (is_fusion_tensor(t.name)) fusion_bytes_ -= t.bytes;
  }
  arena_->deallocate(e.info.extent.offset);
}

const BlockInfo* HostTier::find(const NsKey& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? nullptr : &it->second->info;
}

const BlockInfo* HostTier::acquire(const NsKey& id) {
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  Entry& e = *it->second;
  if (e.info.leases++ == 0) ++leased_blocks_;
  ++e.info.hits;
  e.info.last_access_unix_ms = now_unix_ms();
  policy_.touch(e);
  return &e.info;
}

void HostTier::release(const BlockInfo* block) {
  auto* info = const_cast<BlockInfo*>(block);
  if (--info->leases > 0) return;
  --leased_blocks_;
  if (!info->doomed) return;
  auto it = doomed_.find(block);
  free_entry(*it->second);
  doomed_.erase(it);
}

RemoveOutcome HostTier::remove(const NsKey& id) {
  auto it = index_.find(id);
  if (it == index_.end()) return RemoveOutcome::kNotFound;
  auto e = std::move(it->second);
  index_.erase(it);
  policy_.erase(*e);
  if (e->info.leases > 0) {
    e->info.doomed = true;
    doomed_.emplace(&e->info, std::move(e));
    return RemoveOutcome::kDeferred;
  }
  free_entry(*e);
  return RemoveOutcome::kRemoved;
}

Tier::EvictCount HostTier::evict_matching(const std::function<bool(const BlockInfo&)>& match) {
  EvictCount c;
  for (auto it = index_.begin(); it != index_.end();) {
    Entry& e = *it->second;
    if (!match(e.info)) {
      ++it;
      continue;
    }
    if (e.info.leases > 0) {
      ++c.skipped_leased;
      ++it;
      continue;
    }
    ++c.evicted;
    c.bytes += e.info.extent.bytes;
    policy_.erase(e);
    free_entry(e);
    it = index_.erase(it);
  }
  evictions_ += c.evicted;
  evicted_bytes_ += c.bytes;
  return c;
}

TierUsage HostTier::usage() const {
  TierUsage u;
  u.capacity_bytes = arena_->size();
  u.used_bytes = used_bytes_;
  u.reserved_bytes = reserved_bytes_;
  u.raw_bytes = raw_bytes_;
  u.fusion_bytes = fusion_bytes_;
  u.blocks = index_.size();
  u.leased_blocks = leased_blocks_;
  u.evictions = evictions_;
  u.evicted_bytes = evicted_bytes_;
  return u;
}

void HostTier::visit(const std::function<void(const BlockInfo&)>& fn) const {
  for (const auto& [id, e] : index_) fn(e->info);
}

}  // namespace kvtier
