// The Prometheus side of the counter visitor: the text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), as served by kvtierd's
// GET /metrics.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/counters.h"

namespace kvtier {

// Collects what it visits and renders it: for each family one `# HELP` and one `# TYPE` line,
// then all its samples, families in the order first visited.  A family visited more than
// once (kvtier_tier_used_bytes by every tier) gathers its samples under its one header.
// Label values and help texts are escaped (backslash, double quote in label values, newline);
// histograms become cumulative `_bucket` series ending in le="+Inf", then `_sum` and `_count`.
//
// What it refuses, leaving it out and counting it in dropped(): a sample whose metric or label
// names are not valid Prometheus names (or that brings its own `le` label), a sample of a
// family first visited with another type, and a second sample with the same labels in one
// family.
class PrometheusText final : public CounterVisitor {
 public:
  // The Content-Type of the exposition.
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

  void counter(const Metric& m, Labels labels, Number value) override;
  void gauge(const Metric& m, Labels labels, Number value) override;
  void histogram(const Metric& m, Labels labels, const HistogramData& h) override;

  std::string text() const;
  size_t dropped() const { return dropped_; }

  // [a-zA-Z_:][a-zA-Z0-9_:]*, and for labels [a-zA-Z_][a-zA-Z0-9_]* not starting with "__".
  static bool valid_metric_name(std::string_view name);
  static bool valid_label_name(std::string_view name);

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::string samples;                  // rendered sample lines
    std::vector<std::string> label_sets;  // rendered label sets seen, for duplicates
  };
  // The family to append to, or null when the sample is refused (counted).
  Family* family(const Metric& m, Type type, Labels labels, std::string& rendered_labels);

  std::vector<Family> families_;
  std::unordered_map<std::string, size_t> by_name_;
  size_t dropped_ = 0;
};

}  // namespace kvtier
