// Daemon counters.  Relaxed atomics bumped on the request path and read by one visitor that
// feeds `kvtierctl stats` (and a future /metrics endpoint) alike.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string_view>

namespace kvtier {

#define KVTIER_METRICS(X)                                                                \
  X(connections_total, "connections accepted")                                           \
  X(connections_refused, "connections refused at the max_connections limit")             \
  X(requests, "requests handled")                                                        \
  X(channel_requests, "requests received through shared-memory request channels")        \
  X(channels_opened, "shared-memory request channels opened")                            \
  X(errors, "requests answered with an error")                                           \
  X(protocol_errors, "malformed, oversized or wrong-version messages")                   \
  X(permission_denied, "requests refused by namespace or admin access rules")            \
  X(lookups, "lookup requests")                                                          \
  X(lookup_keys, "keys asked in lookups")                                                \
  X(lookup_hits, "keys found by lookups (the matched prefix)")                           \
  X(puts, "puts sealed")                                                                 \
  X(put_bytes, "raw bytes sealed")                                                       \
  X(puts_aborted, "puts aborted (explicitly or by disconnect)")                          \
  X(puts_no_space, "puts refused for lack of space")                                     \
  X(gets, "get requests")                                                                \
  X(get_hits, "blocks leased by gets")                                                   \
  X(get_misses, "keys not found by gets")                                                \
  X(releases, "leases released by clients")                                              \
  X(leases_reclaimed, "leases released because their connection closed")                 \
  X(removes, "blocks removed by clients")                                                \
  X(demotions, "blocks written to the disk tier on host eviction")                       \
  X(demotions_dropped, "host evictions not demoted: disk write queue full")              \
  X(demotion_failures, "demotions whose disk write failed")                              \
  X(demotions_skipped, "host evictions of disk = off namespaces (or with no disk tier)") \
  X(persisted, "blocks of persist namespaces made durable at seal")                      \
  X(persist_failures, "seals of persist namespaces that could not be made durable")      \
  X(promotions, "blocks read back from the disk tier into the host tier")                \
  X(promotion_waits, "gets that waited on a promotion already in flight")                \
  X(promotion_failures, "promotions that failed (corrupt, I/O, no space)")               \
  X(gpu_puts, "puts sealed into a GPU tier")                                             \
  X(gpu_put_fallbacks, "fp16 puts stored in the host tier: leased blocks fill the GPU")  \
  X(gpu_get_hits, "blocks leased from a GPU tier")                                       \
  X(gpu_promotions, "blocks promoted from the host tier into a GPU tier")                \
  X(gpu_promotion_bytes, "bytes written into GPU tiers by promotions")                   \
  X(gpu_promotion_fallbacks, "GPU gets answered from the host tier: no GPU room")        \
  X(gpu_demotions, "GPU evictions copied down into the host tier")                       \
  X(gpu_demotions_dropped, "GPU evictions not copied down: host tier full")              \
  X(gpu_copy_downs, "host gets of GPU-only blocks copied down into the host tier")       \
  X(searches, "semantic searches")                                                       \
  X(search_hits, "semantic searches that found at least one chunk")

struct Metrics {
#define KVTIER_METRIC_FIELD(name, help) std::atomic<uint64_t> name{0};
  KVTIER_METRICS(KVTIER_METRIC_FIELD)
#undef KVTIER_METRIC_FIELD

  void visit(const std::function<void(std::string_view name, std::string_view help,
                                      uint64_t value)>& fn) const {
#define KVTIER_METRIC_VISIT(name, help) fn(#name, help, name.load(std::memory_order_relaxed));
    KVTIER_METRICS(KVTIER_METRIC_VISIT)
#undef KVTIER_METRIC_VISIT
  }
};

inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.fetch_add(n, std::memory_order_relaxed);
}

}  // namespace kvtier
