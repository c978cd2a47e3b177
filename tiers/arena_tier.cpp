#include "tiers/arena_tier.h"

#include <algorithm>
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

ArenaTier::ArenaTier(std::unique_ptr<SpaceAllocator> space, const ArenaOptions& o)
    : space_(std::move(space)),
      label_(o.label),
      size_key_(o.size_key),
      arena_id_(o.arena_id),
      policy_(space_->size(), o.small_ratio,
              o.ghost_entries ? o.ghost_entries : std::max<size_t>(64, space_->size() >> 16)) {}

ArenaTier::~ArenaTier() {
  policy_.clear();  // unlinks the entries before index_ and doomed_ destroy them
}

Result<Extent> ArenaTier::reserve(uint64_t bytes) {
  if (bytes == 0 || bytes > space_->size())
    return error(Errc::kNoSpace, "block of " + std::to_string(bytes) + " bytes does not fit the " +
                                     label_ + " tier (" + mib(space_->size()) + ")");
  for (;;) {
    auto off = space_->allocate(bytes);
    if (off) {
      reserved_bytes_ += bytes;
      return Extent{arena_id_, off.value(), bytes};
    }
    auto* victim = policy_.evict(
        [](const S3FifoNode& n) { return static_cast<const Entry&>(n).info.leases > 0; });
    if (victim == nullptr) {
      return error(Errc::kNoSpace,
                   label_ + " tier full: " + std::to_string(leased_blocks_) + " of " +
                       std::to_string(index_.size()) + " blocks leased, " + mib(reserved_bytes_) +
                       " reserved by unsealed puts, " + mib(space_->free_bytes()) + " free of " +
                       mib(space_->size()) + "; release leases or grow " + size_key_);
    }
    auto& e = static_cast<Entry&>(*victim);
    on_capacity_evict(e.info);
    ++evictions_;
    evicted_bytes_ += e.info.extent.bytes;
    auto node = index_.extract(e.info.id);  // owns e until the end of this iteration
    free_entry(e);
  }
}

void ArenaTier::unreserve(const Extent& extent) {
  reserved_bytes_ -= extent.bytes;
  space_->deallocate(extent.offset);
}

Status ArenaTier::insert(const NsKey& id, const Extent& extent, BlockLayout layout) {
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

void ArenaTier::free_entry(Entry& e) {
  used_bytes_ -= e.info.extent.bytes;
  for (const auto& t : e.info.layout.tensors) {
    raw_bytes_ -= t.raw_bytes;
    if (is_fusion_tensor(t.name)) fusion_bytes_ -= t.bytes;
  }
  space_->deallocate(e.info.extent.offset);
}

const BlockInfo* ArenaTier::find(const NsKey& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? nullptr : &it->second->info;
}

const BlockInfo* ArenaTier::acquire(const NsKey& id) {
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  Entry& e = *it->second;
  if (e.info.leases++ == 0) ++leased_blocks_;
  ++e.info.hits;
  e.info.last_access_unix_ms = now_unix_ms();
  policy_.touch(e);
  return &e.info;
}

void ArenaTier::release(const BlockInfo* block) {
  auto* info = const_cast<BlockInfo*>(block);
  if (--info->leases > 0) return;
  --leased_blocks_;
  if (!info->doomed) return;
  auto it = doomed_.find(block);
  free_entry(*it->second);
  doomed_.erase(it);
}

RemoveOutcome ArenaTier::remove(const NsKey& id) {
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

Tier::EvictCount ArenaTier::evict_matching(const std::function<bool(const NsKey&)>& match) {
  EvictCount c;
  for (auto it = index_.begin(); it != index_.end();) {
    Entry& e = *it->second;
    if (!match(e.info.id)) {
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

TierUsage ArenaTier::usage() const {
  TierUsage u;
  u.capacity_bytes = space_->size();
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

void ArenaTier::visit(const std::function<void(const BlockInfo&)>& fn) const {
  for (const auto& [id, e] : index_) fn(e->info);
}

}  // namespace kvtier
