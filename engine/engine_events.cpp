// The engine's side of KV events (engine/block_events.h, docs/events.md): the calls the ladder
// makes where a block becomes findable in a tier or leaves it.  The disk tier reports its own
// removals (a reclaimed region is its decision alone) through its removed listener.
#include <unordered_map>

#include "engine/engine.h"

namespace kvtier {

void Engine::set_event_sink(BlockEventSink* sink) {
  events_.store(sink, std::memory_order_release);
  install_disk_listener();  // engine_index.cpp: the disk tier's removals feed both
}

void Engine::event_stored(const NsKey& id, TierKind tier) {
  if (tier == TierKind::kHost || tier == TierKind::kGpu) index_refresh_locked(id);
  if (BlockEventSink* sink = events_.load(std::memory_order_acquire))
    sink->stored(ns_names_.at(id.ns), std::span(&id.key, 1), medium_of(tier));
}

void Engine::event_removed(const NsKey& id, TierKind tier) {
  if (tier == TierKind::kHost || tier == TierKind::kGpu) index_refresh_locked(id);
  if (BlockEventSink* sink = events_.load(std::memory_order_acquire))
    sink->removed(ns_names_.at(id.ns), std::span(&id.key, 1), medium_of(tier));
}

std::function<void(Status)> Engine::remote_stored_event(const NsKey& id) {
  BlockEventSink* sink = events_.load(std::memory_order_acquire);
  if (sink == nullptr) return nullptr;
  return [sink, name = ns_names_.at(id.ns), key = id.key](Status s) {
    if (s) sink->stored(name, std::span(&key, 1), Medium::kRemote);
  };
}

Tier::EvictCount Engine::evict_tracked(MemoryTier& t,
                                       const std::function<bool(const NsKey&)>& match,
                                       EvictedKeys& gone) {
  if (events_.load(std::memory_order_acquire) == nullptr && lookup_index_.empty())
    return t.evict_matching(match);
  // evict_matching() skips leased blocks after matching them: what matched and is no longer
  // in the tier is what it evicted.
  std::vector<NsKey> matched;
  Tier::EvictCount c = t.evict_matching([&](const NsKey& id) {
    if (!match(id)) return false;
    matched.push_back(id);
    return true;
  });
  std::vector<NsKey> evicted;
  for (const NsKey& id : matched)
    if (!t.contains(id)) evicted.push_back(id);
  if (!evicted.empty()) gone.emplace_back(t.kind(), std::move(evicted));
  return c;
}

void Engine::report_evicted(const EvictedKeys& gone, bool everything) {
  for (const auto& [kind, ids] : gone)
    for (const NsKey& id : ids) index_refresh_locked(id);
  BlockEventSink* sink = events_.load(std::memory_order_acquire);
  if (sink == nullptr) return;
  if (everything) {
    sink->cleared();
    return;
  }
  for (const auto& [kind, ids] : gone) {
    // One event per namespace and tier; ids of one namespace need not be adjacent.
    std::unordered_map<uint32_t, std::vector<BlockKey>> by_ns;
    for (const NsKey& id : ids) by_ns[id.ns].push_back(id.key);
    for (const auto& [ns, keys] : by_ns) sink->removed(ns_names_.at(ns), keys, medium_of(kind));
  }
}

}  // namespace kvtier
