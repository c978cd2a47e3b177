// What every tier reports through the counter visitor (common/counters.h): the families shared
// by all tiers, labelled tier="host" | "gpu" | "disk" (plus device="N" for a GPU pool and
// arena="<name>" for an isolation domain's arena or pool; the default domain has no arena
// label).  The memory tiers (host arenas, GPU pools) report what Tier::usage() says through
// visit_tier_counters(); the disk tier reports the same families and its own
// (tiers/disk/disk_counters.cpp).
#pragma once

#include "common/counters.h"
#include "tiers/tier.h"

namespace kvtier::tier_metrics {

inline constexpr Metric kCapacityBytes{"kvtier_tier_capacity_bytes", "bytes the tier may hold",
                                       "capacity_bytes"};
inline constexpr Metric kUsedBytes{
    "kvtier_tier_used_bytes",
    "bytes in use: sealed blocks as stored (host, gpu), region files written (disk)", "used_bytes"};
inline constexpr Metric kRawBytes{"kvtier_tier_raw_bytes",
                                  "bytes the tier's blocks had before encoding", "raw_bytes"};
inline constexpr Metric kCompressionRatio{
    "kvtier_tier_compression_ratio",
    "raw bytes / stored bytes of the tier's blocks (1 when empty; NF4 is about 3.5)",
    "compression_ratio"};
inline constexpr Metric kBlocks{"kvtier_tier_blocks", "blocks stored in the tier", "blocks"};

inline double ratio(uint64_t raw, uint64_t stored) {
  return stored ? double(raw) / double(stored) : 1.0;
}

}  // namespace kvtier::tier_metrics

namespace kvtier {

// A memory tier's usage (read under the lock that guards the tier; visited after).
inline void visit_tier_counters(const TierUsage& u, Labels labels, CounterVisitor& v) {
  using namespace tier_metrics;
  v.gauge(kCapacityBytes, labels, u.capacity_bytes);
  v.gauge(kUsedBytes, labels, u.used_bytes);
  v.gauge(
      {"kvtier_tier_reserved_bytes", "bytes reserved for puts not yet sealed", "reserved_bytes"},
      labels, u.reserved_bytes);
  v.gauge(kRawBytes, labels, u.raw_bytes);
  v.gauge({"kvtier_tier_fusion_bytes",
           "stored bytes of fusion tensors (part of kvtier_tier_used_bytes)", "fusion_bytes"},
          labels, u.fusion_bytes);
  v.gauge(kCompressionRatio, labels, ratio(u.raw_bytes, u.used_bytes));
  v.gauge(kBlocks, labels, u.blocks);
  v.gauge(
      {"kvtier_tier_leased_blocks", "blocks leased by clients (never evicted)", "leased_blocks"},
      labels, u.leased_blocks);
  v.counter({"kvtier_tier_evictions_total", "blocks evicted for capacity", "evictions"}, labels,
            u.evictions);
  v.counter(
      {"kvtier_tier_evicted_bytes_total", "bytes of blocks evicted for capacity", "evicted_bytes"},
      labels, u.evicted_bytes);
}

}  // namespace kvtier
