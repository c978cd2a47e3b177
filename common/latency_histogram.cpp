#include "common/latency_histogram.h"

#include <algorithm>

namespace kvtier {

const std::array<double, LatencyHistogram::kBuckets>& LatencyHistogram::bounds_seconds() {
  static const std::array<double, kBuckets> seconds = [] {
    std::array<double, kBuckets> s{};
    for (size_t i = 0; i < kBuckets; ++i) s[i] = static_cast<double>(kBoundsNs[i]) / 1e9;
    return s;
  }();
  return seconds;
}

size_t LatencyHistogram::shard_of_this_thread() {
  static std::atomic<size_t> next{0};
  thread_local const size_t shard = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return shard;
}

void LatencyHistogram::observe_ns(uint64_t ns) {
  // The first bound >= ns: Prometheus buckets are "less than or equal".
  const size_t b = static_cast<size_t>(std::lower_bound(kBoundsNs.begin(), kBoundsNs.end(), ns) -
                                       kBoundsNs.begin());
  Shard& s = shards_[shard_of_this_thread()];
  s.counts[b].fetch_add(1, std::memory_order_relaxed);
  s.sum_ns.fetch_add(ns, std::memory_order_relaxed);
}

LatencyHistogram::Snapshot LatencyHistogram::snapshot() const {
  Snapshot out;
  for (const Shard& s : shards_) {
    out.sum_ns += s.sum_ns.load(std::memory_order_relaxed);
    for (size_t b = 0; b <= kBuckets; ++b)
      out.counts[b] += s.counts[b].load(std::memory_order_relaxed);
  }
  return out;
}

uint64_t LatencyHistogram::Snapshot::count() const {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

HistogramData LatencyHistogram::Snapshot::data() const {
  return HistogramData{bounds_seconds(), counts, static_cast<double>(sum_ns) / 1e9};
}

}  // namespace kvtier
