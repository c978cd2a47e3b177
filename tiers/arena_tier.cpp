#include "tiers/arena_tier.h"

#include <algorithm>
#include <chrono>
#include <vector>

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
      policy_(
          space_->size(), o.small_ratio,
          o.ghost_entries ? o.ghost_entries : std::max<size_t>(64, space_->size() >> 16),
          S3Fifo::NodeTraits{
              [](const S3FifoNode& n) -> const NsKey& { return static_cast<const Entry&>(n).id; },
              [](const S3FifoNode& n) { return static_cast<const Entry&>(n).extent.bytes; }}),
      buckets_(std::make_unique<Index::bucket_type[]>(kMinBuckets)),
      index_(Index::bucket_traits(buckets_.get(), kMinBuckets)) {}

ArenaTier::~ArenaTier() {
  policy_.clear();  // unlinks the entries before they are deleted
  index_.clear_and_dispose([](Entry* e) { delete e; });
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
    auto* victim =
        policy_.evict([](const S3FifoNode& n) { return static_cast<const Entry&>(n).leases > 0; });
    if (victim == nullptr) {
      return error(Errc::kNoSpace,
                   label_ + " tier full: " + std::to_string(leased_blocks_) + " of " +
                       std::to_string(index_.size()) + " blocks leased, " + mib(reserved_bytes_) +
                       " reserved by unsealed puts, " + mib(space_->free_bytes()) + " free of " +
                       mib(space_->size()) + "; release leases or grow " + size_key_);
    }
    auto& e = static_cast<Entry&>(*victim);
    on_capacity_evict(e);  // still indexed while the listener runs
    ++evictions_;
    evicted_bytes_ += e.extent.bytes;
    free_entry(*unindex(e));
  }
}

void ArenaTier::unreserve(const Extent& extent) {
  reserved_bytes_ -= extent.bytes;
  space_->deallocate(extent.offset);
}

Status ArenaTier::insert(const NsKey& id, const Extent& extent, BlockLayout layout) {
  if (index_.find(id) != index_.end())
    return error(Errc::kAlreadyExists, "block " + id.key.hex() + " exists");
  auto e = std::make_unique<Entry>(id, extent, layouts_.acquire(layout), layout);
  e->created_unix_ms = e->last_access_unix_ms = now_unix_ms();
  reserved_bytes_ -= extent.bytes;
  used_bytes_ += extent.bytes;
  for (const auto& t : e->shape().tensors) {
    raw_bytes_ += t.raw_bytes;
    if (is_fusion_tensor(t.name)) fusion_bytes_ += t.bytes;
  }
  policy_.insert(*e);
  index_.insert(*e.release());  // the index owns it now, until unindex()
  if (index_.size() > index_.bucket_count()) grow_index();
  return {};
}

std::unique_ptr<ArenaTier::Entry> ArenaTier::unindex(Entry& e) {
  index_.erase(index_.iterator_to(e));
  return std::unique_ptr<Entry>(&e);
}

void ArenaTier::grow_index() {
  const size_t n = index_.bucket_count() * 2;
  auto buckets = std::make_unique<Index::bucket_type[]>(n);
  index_.rehash(Index::bucket_traits(buckets.get(), n));
  buckets_ = std::move(buckets);  // the old array is no longer referenced
}

void ArenaTier::free_entry(Entry& e) {
  used_bytes_ -= e.extent.bytes;
  for (const auto& t : e.shape().tensors) {
    raw_bytes_ -= t.raw_bytes;
    if (is_fusion_tensor(t.name)) fusion_bytes_ -= t.bytes;
  }
  space_->deallocate(e.extent.offset);
  layouts_.release(e.shape());
}

const BlockInfo* ArenaTier::find(const NsKey& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? nullptr : &*it;
}

const BlockInfo* ArenaTier::acquire(const NsKey& id) {
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  Entry& e = *it;
  if (e.leases++ == 0) ++leased_blocks_;
  ++e.hits;
  e.last_access_unix_ms = now_unix_ms();
  policy_.touch(e);
  return &e;
}

void ArenaTier::release(const BlockInfo* block) {
  // Every BlockInfo this tier hands out is one of its entries.
  auto& e = const_cast<Entry&>(static_cast<const Entry&>(*block));
  if (--e.leases > 0) return;
  --leased_blocks_;
  if (!e.doomed) return;
  auto it = doomed_.find(block);
  free_entry(*it->second);
  doomed_.erase(it);
}

RemoveOutcome ArenaTier::remove(const NsKey& id) {
  auto it = index_.find(id);
  if (it == index_.end()) return RemoveOutcome::kNotFound;
  std::unique_ptr<Entry> e = unindex(*it);
  policy_.erase(*e);
  if (e->leases > 0) {
    e->doomed = true;
    const BlockInfo* info = e.get();
    doomed_.emplace(info, std::move(e));
    return RemoveOutcome::kDeferred;
  }
  free_entry(*e);
  return RemoveOutcome::kRemoved;
}

Tier::EvictCount ArenaTier::evict_matching(const std::function<bool(const NsKey&)>& match) {
  EvictCount c;
  // The index cannot erase while it iterates: pick first, then free.
  std::vector<Entry*> victims;
  for (Entry& e : index_) {
    if (!match(e.id)) continue;
    if (e.leases > 0) {
      ++c.skipped_leased;
      continue;
    }
    victims.push_back(&e);
  }
  for (Entry* e : victims) {
    ++c.evicted;
    c.bytes += e->extent.bytes;
    policy_.erase(*e);
    free_entry(*unindex(*e));
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

ArenaTier::MemoryUsage ArenaTier::memory() const {
  // docs/internals.md, "Memory per block", accounts for an entry field by field (LP64).
  static_assert(sizeof(void*) != 8 || sizeof(Entry) == 136, "Entry grew: update the docs");
  MemoryUsage m;
  m.entries = index_.size() + doomed_.size();
  m.entry_bytes = sizeof(Entry);
  m.bucket_bytes = index_.bucket_count() * sizeof(Index::bucket_type);
  m.shapes = layouts_.size();
  m.shape_bytes = layouts_.heap_bytes();
  m.ghosts = policy_.ghost_count();
  return m;
}

void ArenaTier::visit(const std::function<void(const BlockInfo&)>& fn) const {
  for (const Entry& e : index_) fn(e);
}

}  // namespace kvtier
