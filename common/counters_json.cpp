#include "common/counters_json.h"

#include <utility>

namespace kvtier {

JsonCounterVisitor::JsonCounterVisitor(nlohmann::json& out, std::vector<std::string> nest)
    : out_(out), nest_(std::move(nest)) {
  if (out_.is_null()) out_ = nlohmann::json::object();
}

nlohmann::json& JsonCounterVisitor::object_for(Labels labels) {
  nlohmann::json* obj = &out_;
  for (const std::string& name : nest_) {
    const Label* found = nullptr;
    for (const Label& l : labels)
      if (l.name == name) found = &l;
    if (found == nullptr) break;
    obj = &(*obj)[std::string(found->value)];
  }
  return *obj;
}

void JsonCounterVisitor::number(const Metric& m, Labels labels, Number value) {
  if (m.json.empty()) return;
  nlohmann::json& slot = object_for(labels)[std::string(m.json)];
  if (value.integral() && m.json_scale == 1)
    slot = value.u64();
  else
    slot = value.value() * m.json_scale;
}

void JsonCounterVisitor::counter(const Metric& m, Labels labels, Number value) {
  number(m, labels, value);
}

void JsonCounterVisitor::gauge(const Metric& m, Labels labels, Number value) {
  number(m, labels, value);
}

void JsonCounterVisitor::histogram(const Metric& m, Labels labels, const HistogramData& h) {
  if (m.json.empty()) return;
  auto buckets = nlohmann::json::array();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size() && i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    buckets.push_back({h.bounds[i] * m.json_scale, cumulative});
  }
  for (size_t i = h.bounds.size(); i < h.counts.size(); ++i) cumulative += h.counts[i];
  object_for(labels)[std::string(m.json)] = {
      {"count", cumulative}, {"sum", h.sum * m.json_scale}, {"buckets", std::move(buckets)}};
}

}  // namespace kvtier
