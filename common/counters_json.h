// The JSON side of the counter visitor: what a component reports lands in its object of
// `kvtierctl stats --json` under each metric's JSON key (Metric::json).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/counters.h"

namespace kvtier {

// Writes every visited metric that has a JSON key into `out` (an object, created if null):
// counters and gauges as numbers (integers stay integers unless json_scale changes them),
// histograms as {"count": n, "sum": s, "buckets": [[le, observations <= le], ...]} over the
// finite bounds (cumulative; `count` is the +Inf bucket), with sum and le scaled.
//
// `nest` lists label names that open one level each, in order: a sample labelled
// namespace="a", modality="v" visited with nest {"namespace", "modality"} lands in
// out["a"]["v"][key].  Nesting stops at the first of them a sample does not carry; other
// labels are ignored (the object a visitor writes into already says which part it is).
class JsonCounterVisitor final : public CounterVisitor {
 public:
  explicit JsonCounterVisitor(nlohmann::json& out, std::vector<std::string> nest = {});

  void counter(const Metric& m, Labels labels, Number value) override;
  void gauge(const Metric& m, Labels labels, Number value) override;
  void histogram(const Metric& m, Labels labels, const HistogramData& h) override;

 private:
  // The object a sample with these labels is written into.
  nlohmann::json& object_for(Labels labels);
  void number(const Metric& m, Labels labels, Number value);

  nlohmann::json& out_;
  const std::vector<std::string> nest_;
};

}  // namespace kvtier
