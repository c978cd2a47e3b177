// The engine's side of the counter visitor: the memory tiers (read under mu_ through
// Tier::usage(), reported by tiers/tier_counters.h), the sessions, and the parts that report
// themselves (disk tier, semantic index, Metrics, codec, NF4 error samples).
#include "engine/engine.h"
#include "tiers/tier_counters.h"

namespace kvtier {

Engine::CounterSnapshot Engine::counter_snapshot() const {
  CounterSnapshot s;
  MutexLock lock(mu_);
  for (const auto& h : hosts_) s.hosts.push_back(h->usage());
  for (const auto& t : gpu_.tiers) s.pools.push_back(t->usage());
  s.sessions = sessions_.size();
  for (const auto& [id, session] : sessions_) {
    s.leases += session.leases.size();
    s.pending_puts += session.puts.size();
    s.leased_bytes += session.leased_bytes;
  }
  s.pinned_blocks = pins_.size();
  for (const auto& [ns, bytes] : pinned_bytes_) s.pinned_bytes += bytes;
  return s;
}

std::string_view Engine::domain_label(uint32_t domain) const {
  return domain == 0 ? std::string_view() : std::string_view(config_.arenas[domain - 1].name);
}

void Engine::visit_session_counters(const CounterSnapshot& s, CounterVisitor& v) {
  v.gauge({"kvtier_sessions", "client connections open", "sessions"}, {}, s.sessions);
  v.gauge({"kvtier_leases", "leases held by clients", "leases"}, {}, s.leases);
  v.gauge({"kvtier_pending_puts", "puts begun and not yet sealed or aborted", "pending_puts"}, {},
          s.pending_puts);
  v.gauge({"kvtier_leased_bytes", "bytes of the blocks leased by clients", "leased_bytes"}, {},
          s.leased_bytes);
  v.gauge({"kvtier_pinned_blocks", "blocks pinned (kvtierctl pin), every tier", "pinned_blocks"},
          {}, s.pinned_blocks);
  v.gauge({"kvtier_pinned_bytes", "stored bytes of the pinned blocks", "pinned_bytes"}, {},
          s.pinned_bytes);
}

void Engine::visit_lookup_index_counters(uint32_t d, CounterVisitor& v) const {
  const LookupIndex::Stats st = lookup_index_[d]->stats();
  const std::string_view arena = domain_label(d);
  const Label label[] = {{"arena", arena}};
  const Labels labels = Labels(label).first(arena.empty() ? 0 : 1);
  v.gauge({"kvtier_lookup_index_entries", "blocks listed in the shared lookup index",
           "lookup_index_entries"},
          labels, st.live);
  v.gauge({"kvtier_lookup_index_slots", "slots of the shared lookup index (32 bytes each)",
           "lookup_index_slots"},
          labels, st.slots);
  v.gauge({"kvtier_lookup_index_generation",
           "memfds the lookup index has published (it grows into a new one)",
           "lookup_index_generation"},
          labels, st.generation);
  v.counter({"kvtier_lookup_index_dropped_total",
             "blocks left out of a lookup index at lookup_index_max_slots", "lookup_index_dropped"},
            labels, st.dropped);
}

void Engine::visit_counters(CounterVisitor& v) const {
  const CounterSnapshot s = counter_snapshot();
  for (uint32_t d = 0; d < s.hosts.size(); ++d) {
    const std::string_view arena = domain_label(d);
    const Label labels[] = {{"tier", "host"}, {"arena", arena}};
    visit_tier_counters(s.hosts[d], Labels(labels).first(arena.empty() ? 1 : 2), v);
  }
  for (size_t i = 0; i < s.pools.size(); ++i) {
    const GpuTier& t = *gpu_.tiers[i];
    const std::string device = std::to_string(t.device());
    const std::string_view arena = domain_label(t.domain());
    const Label labels[] = {{"tier", "gpu"}, {"device", device}, {"arena", arena}};
    visit_tier_counters(s.pools[i], Labels(labels).first(arena.empty() ? 2 : 3), v);
  }
  for (uint32_t d = 0; d < lookup_index_.size(); ++d) visit_lookup_index_counters(d, v);
  if (disk_) disk_->visit_counters(v);
  if (remote_) remote_->visit_counters(v);
  if (index_) index_->visit_counters(v);
  visit_session_counters(s, v);
  metrics_.visit_counters(v);
  metrics_.visit_latency(v);
  codec_.visit_counters(v);
  nf4_errors_.visit_counters(v);
  if (const BlockEventSink* events = events_.load(std::memory_order_acquire))
    events->visit_counters(v);
}

}  // namespace kvtier
