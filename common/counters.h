// The one interface through which every part of kvtierd reports its counters and gauges:
// each tier, the semantic index, the sessions, the codec, disk I/O and the request handlers
// have a `visit_counters(CounterVisitor&)` next to their code, and the same call feeds
// `kvtierctl stats --json` (JsonCounterVisitor, common/counters_json.h) and the Prometheus
// text exposition of GET /metrics (PrometheusText, common/prometheus_text.h).  Values are read
// when a visitor asks (counters aggregated on read), never pushed.
//
// A visit_counters() may be called from any thread; what it reads says how it is made safe
// (atomics, or its component's own lock, held only while it reads).
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

namespace kvtier {

// One family of samples.
struct Metric {
  // The Prometheus family: `kvtier_<part>_<what>`, base units in the name (`_bytes`,
  // `_seconds`), counters ending in `_total`.
  std::string_view name;
  std::string_view help;  // one line
  // Its key in the component's object of `kvtierctl stats --json`; empty: not in the JSON.
  std::string_view json = {};
  // The JSON value is the value times this (1e6: seconds reported as "..._us" keys).
  double json_scale = 1;
};

struct Label {
  std::string_view name;
  std::string_view value;
};
using Labels = std::span<const Label>;

// A sample's value.  Counts stay integers (the JSON writes them as such); ratios, seconds and
// other measures are doubles.
class Number {
 public:
  template <std::integral T>
  requires(!std::same_as<T, bool>) constexpr Number(T v) : d_(static_cast<double>(v)) {
    if constexpr (std::is_signed_v<T>) {
      if (v < 0) return;  // a negative integer is kept as a double
    }
    u_ = static_cast<uint64_t>(v);
    integral_ = true;
  }
  constexpr Number(double v) : d_(v) {}

  bool integral() const { return integral_; }
  uint64_t u64() const { return u_; }  // integral() only
  double value() const { return d_; }

 private:
  double d_ = 0;
  uint64_t u_ = 0;
  bool integral_ = false;
};

// A histogram as read.  counts[i] is the number of observations in (bounds[i-1], bounds[i]];
// counts[bounds.size()] those above the last bound (the +Inf bucket), so counts has
// bounds.size() + 1 entries, not cumulative.  `sum` is the sum of the observed values.
struct HistogramData {
  std::span<const double> bounds;  // ascending upper bounds
  std::span<const uint64_t> counts;
  double sum = 0;
};

class CounterVisitor {
 public:
  virtual ~CounterVisitor() = default;
  // Monotonic since the daemon started (Prometheus counter).
  virtual void counter(const Metric& m, Labels labels, Number value) = 0;
  // A level that goes up and down: bytes in use, blocks, ratios, settings in force.
  virtual void gauge(const Metric& m, Labels labels, Number value) = 0;
  virtual void histogram(const Metric& m, Labels labels, const HistogramData& h) = 0;
};

}  // namespace kvtier
