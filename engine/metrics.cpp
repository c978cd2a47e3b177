#include "engine/metrics.h"

namespace kvtier {

void Metrics::visit_counters(CounterVisitor& v) const {
#define KVTIER_METRIC_VISIT(key, name, help) \
  v.counter({name, help, #key}, {}, key.load(std::memory_order_relaxed));
  KVTIER_METRICS(KVTIER_METRIC_VISIT)
#undef KVTIER_METRIC_VISIT
}

void Metrics::visit_latency(CounterVisitor& v) const {
  for (size_t i = 0; i < latency.size(); ++i) {
    const LatencyHistogram::Snapshot s = latency[i].snapshot();
    const Label request[] = {{"request", kTimedNames[i]}};
    v.histogram({"kvtier_request_duration_seconds",
                 "time from a decoded request to its reply built, by request type", kTimedNames[i]},
                request, s.data());
  }
}

}  // namespace kvtier
