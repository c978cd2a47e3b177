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
