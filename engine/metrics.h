// Daemon-wide counters and request latencies.  Relaxed atomics bumped on the request path
// (the histograms are sharded per thread), read by visit_counters()/visit_latency(), which
// feed `kvtierctl stats --json` ("counters", "latency") and GET /metrics alike.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

#include "common/counters.h"
#include "common/latency_histogram.h"

namespace kvtier {

// Each counter: its key under "counters" in `kvtierctl stats --json`, its Prometheus name, and
// what it counts.
#define KVTIER_METRICS(X)                                                                        \
  X(connections_total, "kvtier_connections_total", "connections accepted")                       \
  X(connections_refused, "kvtier_connections_refused_total",                                     \
    "connections refused at the max_connections limit")                                          \
  X(requests, "kvtier_requests_total", "requests handled")                                       \
  X(channel_requests, "kvtier_channel_requests_total",                                           \
    "requests received through shared-memory request channels")                                  \
  X(channels_opened, "kvtier_channels_opened_total", "shared-memory request channels opened")    \
  X(errors, "kvtier_request_errors_total", "requests answered with an error")                    \
  X(protocol_errors, "kvtier_protocol_errors_total",                                             \
    "malformed, oversized or wrong-version messages")                                            \
  X(permission_denied, "kvtier_permission_denied_total",                                         \
    "requests refused by namespace or admin access rules")                                       \
  X(lookups, "kvtier_lookups_total",                                                             \
    "lookup requests answered by the daemon (lookups from the shared index are not seen)")       \
  X(resolves, "kvtier_resolves_total", "namespaces resolved for the shared lookup index")        \
  X(index_maps, "kvtier_lookup_index_maps_total", "lookup index descriptors handed to clients")  \
  X(carried_releases, "kvtier_carried_releases_total",                                           \
    "leases released by ids carried on another request (RequestMsg.releases)")                   \
  X(oneway_requests, "kvtier_oneway_requests_total",                                             \
    "one-way requests handled without a reply (posted releases)")                                \
  X(lookup_keys, "kvtier_lookup_keys_total", "keys asked in lookups")                            \
  X(lookup_hits, "kvtier_lookup_hits_total", "keys found by lookups (the matched prefix)")       \
  X(puts, "kvtier_puts_total", "puts sealed")                                                    \
  X(put_bytes, "kvtier_put_bytes_total", "raw bytes sealed")                                     \
  X(puts_aborted, "kvtier_puts_aborted_total", "puts aborted (explicitly or by disconnect)")     \
  X(puts_no_space, "kvtier_puts_no_space_total", "puts refused for lack of space")               \
  X(gets, "kvtier_gets_total", "get requests")                                                   \
  X(get_hits, "kvtier_get_hits_total", "blocks leased by gets")                                  \
  X(get_misses, "kvtier_get_misses_total", "keys not found by gets")                             \
  X(releases, "kvtier_releases_total", "leases released by clients")                             \
  X(leases_reclaimed, "kvtier_leases_reclaimed_total",                                           \
    "leases released because their connection closed")                                           \
  X(removes, "kvtier_removes_total", "blocks removed by clients")                                \
  X(demotions, "kvtier_demotions_total", "blocks written to the disk tier on host eviction")     \
  X(demotions_dropped, "kvtier_demotions_dropped_total",                                         \
    "host evictions not demoted: disk write queue full")                                         \
  X(demotion_failures, "kvtier_demotion_failures_total", "demotions whose disk write failed")    \
  X(demotions_skipped, "kvtier_demotions_skipped_total",                                         \
    "host evictions of disk = off namespaces (or with no disk tier)")                            \
  X(persisted, "kvtier_persisted_total", "blocks of persist namespaces made durable at seal")    \
  X(persist_failures, "kvtier_persist_failures_total",                                           \
    "seals of persist namespaces that could not be made durable")                                \
  X(promotions, "kvtier_promotions_total",                                                       \
    "blocks read back from the disk tier into the host tier")                                    \
  X(promotion_waits, "kvtier_promotion_waits_total",                                             \
    "gets that waited on a promotion already in flight")                                         \
  X(promotion_failures, "kvtier_promotion_failures_total",                                       \
    "promotions that failed (corrupt, I/O, no space)")                                           \
  X(remote_lookup_hits, "kvtier_remote_lookup_hits_total",                                       \
    "lookup keys found in the remote tier after the local prefix")                               \
  X(remote_lookup_timeouts, "kvtier_remote_lookup_timeouts_total",                               \
    "lookups whose remote step ran past remote.lookup_timeout_ms (counted as misses)")           \
  X(gpu_puts, "kvtier_gpu_puts_total", "puts sealed into a GPU tier")                            \
  X(gpu_device_puts, "kvtier_gpu_device_puts_total",                                             \
    "puts sealed from a connection's device staging (device-to-device)")                         \
  X(gpu_device_put_bytes, "kvtier_gpu_device_put_bytes_total",                                   \
    "bytes of puts sealed from device staging")                                                  \
  X(gpu_put_fallbacks, "kvtier_gpu_put_fallbacks_total",                                         \
    "fp16 puts stored in the host tier: leased blocks fill the GPU")                             \
  X(gpu_get_hits, "kvtier_gpu_get_hits_total", "blocks leased from a GPU tier")                  \
  X(gpu_promotion_batches, "kvtier_gpu_promotion_batches_total",                                 \
    "batches of promotions: a GPU get's host blocks go to the device together")                  \
  X(gpu_promotions, "kvtier_gpu_promotions_total",                                               \
    "blocks promoted from the host tier into a GPU tier")                                        \
  X(gpu_promotion_bytes, "kvtier_gpu_promotion_bytes_total",                                     \
    "bytes written into GPU tiers by promotions")                                                \
  X(gpu_promotion_fallbacks, "kvtier_gpu_promotion_fallbacks_total",                             \
    "GPU gets answered from the host tier: no GPU room")                                         \
  X(gpu_demotions, "kvtier_gpu_demotions_total", "GPU evictions copied down into the host tier") \
  X(gpu_demotions_dropped, "kvtier_gpu_demotions_dropped_total",                                 \
    "GPU evictions not copied down: host tier full, or removed during the copy")                 \
  X(gpu_demotions_unlocked, "kvtier_gpu_demotions_unlocked_total",                               \
    "GPU evictions copied down after the engine lock was released")                              \
  X(gpu_async_promotions, "kvtier_gpu_async_promotions_total",                                   \
    "promotion batches answered before the device finished (async GPU gets)")                    \
  X(gpu_async_completions, "kvtier_gpu_async_completions_total",                                 \
    "async promotion batches the device finished (their host blocks released)")                  \
  X(gpu_ready_waits, "kvtier_gpu_ready_waits_total",                                             \
    "GPU grants of a get that did not ask async, waited for in the daemon")                      \
  X(gpu_copy_downs, "kvtier_gpu_copy_downs_total",                                               \
    "host gets of GPU-only blocks copied down into the host tier")                               \
  X(searches, "kvtier_searches_total", "semantic searches")                                      \
  X(search_hits, "kvtier_search_hits_total", "semantic searches that found at least one chunk")  \
  X(pins, "kvtier_pins_total", "keys pinned (refreshed pins included)")                          \
  X(pin_refusals, "kvtier_pin_refusals_total",                                                   \
    "pin requests refused (not cached, quota, no room in the tier asked for)")                   \
  X(unpins, "kvtier_unpins_total", "pins dropped by unpin or with a removed block")              \
  X(pins_expired, "kvtier_pins_expired_total", "pins whose TTL ended")

struct Metrics {
#define KVTIER_METRIC_FIELD(key, name, help) std::atomic<uint64_t> key{0};
  KVTIER_METRICS(KVTIER_METRIC_FIELD)
#undef KVTIER_METRIC_FIELD

  // The requests whose handling time is measured where the daemon dispatches them
  // (daemon/session.cpp, Session::handle): from the decoded request to the reply built, not
  // the socket or channel transfer around it.  A client's put is one kPutBegin and one kSeal.
  enum class Timed : uint8_t {
    kLookup,
    kGet,
    kGetFusion,
    kPutBegin,
    kSeal,
    kSearch,
    kPutBatch,
    kSealBatch,
    kCount
  };
  static constexpr std::array<std::string_view, size_t(Timed::kCount)> kTimedNames = {
      "lookup", "get", "get_fusion", "put_begin", "seal", "search", "put_batch", "seal_batch"};
  std::array<LatencyHistogram, size_t(Timed::kCount)> latency;
  void observe(Timed request, uint64_t ns) {
    latency[size_t(request)].observe_ns(ns);
  }

  // Every counter above (Prometheus counters; JSON keys of "counters").
  void visit_counters(CounterVisitor& v) const;
  // kvtier_request_duration_seconds{request=...} (JSON: "latency", one object per request).
  void visit_latency(CounterVisitor& v) const;
};

inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.fetch_add(n, std::memory_order_relaxed);
}

}  // namespace kvtier
