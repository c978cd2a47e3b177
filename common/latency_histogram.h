// Request latencies as a Prometheus histogram, recorded lock-free on the request path.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "common/counters.h"

namespace kvtier {

// Durations in fixed buckets from 1 us to 10 s (1-2.5-5 steps).  observe() is a few relaxed
// atomic adds on one of kShards cache-line-sized shards, chosen once per thread, so io threads
// recording at once do not share cache lines; snapshot() sums the shards (counters aggregated
// on read).  A snapshot taken while observations land may count one whose duration is not yet
// in `sum` (relaxed atomics); the buckets and the count always agree.
class LatencyHistogram {
 public:
  static constexpr size_t kBuckets = 22;  // finite bounds; one more bucket holds the rest
  // Upper bounds in nanoseconds.
  static constexpr std::array<uint64_t, kBuckets> kBoundsNs = {
      1'000,         2'500,         5'000,         10'000,        25'000,      50'000,
      100'000,       250'000,       500'000,       1'000'000,     2'500'000,   5'000'000,
      10'000'000,    25'000'000,    50'000'000,    100'000'000,   250'000'000, 500'000'000,
      1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
  // The same bounds in seconds (for HistogramData).
  static const std::array<double, kBuckets>& bounds_seconds();

  void observe_ns(uint64_t ns);

  struct Snapshot {
    std::array<uint64_t, kBuckets + 1> counts{};  // per bucket, not cumulative; last: > 10 s
    uint64_t sum_ns = 0;
    uint64_t count() const;
    HistogramData data() const;  // valid while this snapshot lives
  };
  Snapshot snapshot() const;

 private:
  static constexpr size_t kShards = 8;
  struct alignas(64) Shard {
    std::array<std::atomic<uint64_t>, kBuckets + 1> counts{};
    std::atomic<uint64_t> sum_ns{0};
  };
  static size_t shard_of_this_thread();
  std::array<Shard, kShards> shards_;
};

}  // namespace kvtier
