// The engine's side of the shared lookup index (common/lookup_index.h, docs/protocol.md
// "Lookup index").  Every place where a block becomes findable in a memory tier or leaves one
// already reports a KV event (engine_events.cpp); the same calls refresh the block's entry
// from the memory tiers, under mu_.  The disk bit follows the disk tier: set when a demotion
// or a persist write is queued (a lookup counts a block being written as cached), cleared by
// the disk tier's removal reports and by a failed write.
#include <stdexcept>

#include "engine/engine.h"

namespace kvtier {

void Engine::open_lookup_index(const BlockKey& instance) {
  if (!config_.daemon.lookup_index || !lookup_index_.empty()) return;
  auto live = DaemonLiveness::create();
  if (!live) throw std::runtime_error("lookup index: " + live.status().message());
  liveness_ = std::move(live).value();
  for (size_t d = 0; d < hosts_.size(); ++d) {
    LookupIndex::Options o;
    o.domain = static_cast<uint32_t>(d);
    o.instance = instance;
    o.slots = config_.daemon.lookup_index_slots;
    o.max_slots = config_.daemon.lookup_index_max_slots;
    auto idx = LookupIndex::create(o);
    if (!idx) throw std::runtime_error("lookup index: " + idx.status().message());
    lookup_index_.push_back(std::move(idx).value());
  }
  // What the disk tier recovered, read before taking mu_ (LMDB reads): its namespaces are
  // interned (ids are this process's) and listed.  A namespace no rule matches any more stays
  // out (no client could resolve it).
  std::vector<std::pair<std::string, BlockKey>> found;
  if (disk_) disk_->visit([&](const DiskEntry& e) { found.emplace_back(e.ns, e.key); });
  MutexLock lock(mu_);
  {
    MutexLock names(index_names_mu_);
    for (uint32_t id = 0; id < ns_names_.size(); ++id)  // interned before the index existed
      index_names_.emplace(ns_names_[id], std::make_pair(id, ns_domains_[id]));
  }
  for (const auto& [name, key] : found) {
    const config::NamespaceRule* rule = config_.rule_for(name);
    if (rule == nullptr) continue;
    const uint32_t ns = intern_locked(name, rule);
    index_disk(ns_domains_.at(ns), NsKey{ns, key}, true);
  }
  install_disk_listener();
}

LookupIndex* Engine::lookup_index(uint32_t domain) const {
  return domain < lookup_index_.size() ? lookup_index_[domain].get() : nullptr;
}

void Engine::retire_lookup_index() {
  for (const auto& idx : lookup_index_) idx->retire();
}

void Engine::index_refresh_locked(const NsKey& id, const MemoryTier* leaving) {
  if (lookup_index_.empty()) return;
  const uint32_t domain = ns_domains_.at(id.ns);
  uint32_t bits = 0;
  for (MemoryTier* t : memory_ladder_.at(domain))
    if (t != leaving && t->contains(id))
      bits |= t->kind() == TierKind::kGpu ? kIndexGpu : kIndexHost;
  lookup_index_[domain]->update(id.ns, id.key, kIndexGpu | kIndexHost, bits);
}

void Engine::index_disk(uint32_t domain, const NsKey& id, bool on) const {
  if (domain < lookup_index_.size())
    lookup_index_[domain]->update(id.ns, id.key, kIndexDisk, on ? kIndexDisk : 0);
}

void Engine::on_disk_removed(std::string_view ns, std::span<const BlockKey> keys) {
  if (!lookup_index_.empty()) {
    std::optional<std::pair<uint32_t, uint32_t>> id;
    {
      MutexLock lock(index_names_mu_);
      if (auto it = index_names_.find(std::string(ns)); it != index_names_.end()) id = it->second;
    }
    // A block written again since (a new demotion) is still on the disk: keep its bit.
    if (id)
      for (const BlockKey& k : keys)
        if (!disk_->contains(NsKey{id->first, k}))
          index_disk(id->second, NsKey{id->first, k}, false);
  }
  if (BlockEventSink* sink = events_.load(std::memory_order_acquire))
    sink->removed(ns, keys, Medium::kDisk);
}

void Engine::install_disk_listener() {
  if (disk_ == nullptr) return;
  if (lookup_index_.empty() && events_.load(std::memory_order_acquire) == nullptr) {
    disk_->set_removed_listener({});
    return;
  }
  disk_->set_removed_listener(
      [this](std::string_view ns, std::span<const BlockKey> keys) { on_disk_removed(ns, keys); });
}

}  // namespace kvtier
