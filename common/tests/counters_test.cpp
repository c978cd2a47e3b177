// The counter visitor's readers: the Prometheus text exposition (format 0.0.4), the JSON of
// `kvtierctl stats --json`, and the latency histogram.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "common/counters_json.h"
#include "common/latency_histogram.h"
#include "common/prometheus_text.h"

using namespace kvtier;

namespace {

const Metric kUsed{"kvtier_tier_used_bytes", "Bytes held by sealed blocks.", "used_bytes"};
const Metric kPuts{"kvtier_puts_total", "Puts sealed.", "puts"};

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("exposition: one HELP and TYPE per family, its samples together, in visit order") {
  PrometheusText p;
  const Label host[] = {{"tier", "host"}};
  const Label disk[] = {{"tier", "disk"}};
  p.gauge(kUsed, host, uint64_t{4096});
  p.counter(kPuts, {}, 7);
  p.gauge(kUsed, disk, uint64_t{0});  // the family again, after another one
  CHECK(p.text() ==
        "# HELP kvtier_tier_used_bytes Bytes held by sealed blocks.\n"
        "# TYPE kvtier_tier_used_bytes gauge\n"
        "kvtier_tier_used_bytes{tier=\"host\"} 4096\n"
        "kvtier_tier_used_bytes{tier=\"disk\"} 0\n"
        "# HELP kvtier_puts_total Puts sealed.\n"
        "# TYPE kvtier_puts_total counter\n"
        "kvtier_puts_total 7\n");
  CHECK(p.dropped() == 0);
}

TEST_CASE("exposition: label values and help texts are escaped") {
  PrometheusText p;
  const Label ns[] = {{"namespace", "a\\b\"c\nd"}, {"modality", "vision"}};
  p.gauge({"kvtier_x", "back\\slash\nnew \"line\""}, ns, 1.5);
  const std::string t = p.text();
  INFO(t);
  // In help only backslash and newline are escaped; label values escape the quote too.
  CHECK_THAT(t, Catch::Contains("# HELP kvtier_x back\\\\slash\\nnew \"line\"\n"));
  CHECK_THAT(t,
             Catch::Contains("kvtier_x{namespace=\"a\\\\b\\\"c\\nd\",modality=\"vision\"} 1.5\n"));
  CHECK(count_of(t, "\n") == 3);  // no raw newline leaked into a line
}

TEST_CASE("exposition: histogram buckets are cumulative and end with +Inf, then _sum, _count") {
  PrometheusText p;
  const double bounds[] = {0.001, 0.5, 1};
  const uint64_t counts[] = {1, 2, 0, 3};  // per bucket; the last is above 1 s
  const Label req[] = {{"request", "get"}};
  p.histogram({"kvtier_request_duration_seconds", "Latency."}, req,
              HistogramData{bounds, counts, 12.25});
  CHECK(p.text() ==
        "# HELP kvtier_request_duration_seconds Latency.\n"
        "# TYPE kvtier_request_duration_seconds histogram\n"
        "kvtier_request_duration_seconds_bucket{request=\"get\",le=\"0.001\"} 1\n"
        "kvtier_request_duration_seconds_bucket{request=\"get\",le=\"0.5\"} 3\n"
        "kvtier_request_duration_seconds_bucket{request=\"get\",le=\"1\"} 3\n"
        "kvtier_request_duration_seconds_bucket{request=\"get\",le=\"+Inf\"} 6\n"
        "kvtier_request_duration_seconds_sum{request=\"get\"} 12.25\n"
        "kvtier_request_duration_seconds_count{request=\"get\"} 6\n");
}

TEST_CASE("exposition: numbers") {
  PrometheusText p;
  const Label a[] = {{"v", "a"}}, b[] = {{"v", "b"}}, c[] = {{"v", "c"}}, d[] = {{"v", "d"}},
              e[] = {{"v", "e"}};
  p.gauge({"kvtier_n", "n"}, a, std::numeric_limits<uint64_t>::max());  // exact, not a double
  p.gauge({"kvtier_n", "n"}, b, -3);
  p.gauge({"kvtier_n", "n"}, c, std::numeric_limits<double>::quiet_NaN());
  p.gauge({"kvtier_n", "n"}, d, std::numeric_limits<double>::infinity());
  p.gauge({"kvtier_n", "n"}, e, 0.1);
  const std::string t = p.text();
  INFO(t);
  CHECK_THAT(t, Catch::Contains("kvtier_n{v=\"a\"} 18446744073709551615\n"));
  CHECK_THAT(t, Catch::Contains("kvtier_n{v=\"b\"} -3\n"));
  CHECK_THAT(t, Catch::Contains("kvtier_n{v=\"c\"} NaN\n"));
  CHECK_THAT(t, Catch::Contains("kvtier_n{v=\"d\"} +Inf\n"));
  CHECK_THAT(t, Catch::Contains("kvtier_n{v=\"e\"} 0.1\n"));
}

TEST_CASE("exposition: bad names, type conflicts and duplicate series are left out") {
  PrometheusText p;
  const Label bad_label[] = {{"1tier", "x"}};
  const Label reserved[] = {{"__name", "x"}};
  const Label le[] = {{"le", "1"}};
  const Label host[] = {{"tier", "host"}};
  p.gauge({"kvtier-bad", "x"}, {}, 1);
  p.gauge({"kvtier_ok", "x"}, bad_label, 1);
  p.gauge({"kvtier_ok", "x"}, reserved, 1);
  p.gauge({"kvtier_ok", "x"}, le, 1);
  p.gauge(kUsed, host, 1);
  p.gauge(kUsed, host, 2);  // the same series twice
  p.counter(kUsed, {}, 3);  // another type for the family
  CHECK(p.dropped() == 6);
  const std::string t = p.text();
  CHECK(count_of(t, "kvtier_tier_used_bytes{") == 1);
  CHECK_THAT(t, !Catch::Contains("kvtier_ok") && !Catch::Contains("kvtier-bad"));
  CHECK(PrometheusText::valid_metric_name("kvtier:rate5m_total"));
  CHECK_FALSE(PrometheusText::valid_label_name("a:b"));
}

TEST_CASE("JSON: keys, integers kept, scaled values, histograms, metrics without a key") {
  nlohmann::json j;
  JsonCounterVisitor v(j);
  const Label host[] = {{"tier", "host"}};
  v.gauge(kUsed, host, uint64_t{4096});
  v.gauge({"kvtier_tier_compression_ratio", "r", "compression_ratio"}, host, 3.5);
  v.counter({"kvtier_index_search_seconds_total", "s", "search_us_total", 1e6}, {}, 0.25);
  v.counter({"kvtier_prometheus_only_total", "p"}, {}, 9);
  const double bounds[] = {0.001, 1};
  const uint64_t counts[] = {2, 1, 4};
  v.histogram({"kvtier_request_duration_seconds", "l", "get"}, {},
              HistogramData{bounds, counts, 6.5});
  CHECK(j["used_bytes"].is_number_unsigned());
  CHECK(j["used_bytes"] == 4096);
  CHECK(j["compression_ratio"] == 3.5);
  CHECK(j["search_us_total"].get<double>() == Approx(250000.0));
  CHECK_FALSE(j.contains("prometheus_only"));
  CHECK(j.size() == 4);
  CHECK(j["get"]["count"] == 7);
  CHECK(j["get"]["sum"] == 6.5);
  CHECK(j["get"]["buckets"] == nlohmann::json::parse("[[0.001, 2], [1.0, 3]]"));
}

TEST_CASE("JSON: nesting by labels stops at the first label a sample lacks") {
  nlohmann::json j;
  JsonCounterVisitor v(j, {"namespace", "modality"});
  const Label both[] = {{"namespace", "mm/vlm"}, {"modality", "vision"}};
  const Label ns_only[] = {{"namespace", "mm/vlm"}};
  v.counter({"kvtier_index_searches_total", "s", "searches"}, both, 3);
  v.gauge({"kvtier_x", "x", "per_namespace"}, ns_only, 1);
  v.counter({"kvtier_index_saves_total", "s", "saves"}, {}, 2);
  CHECK(j == nlohmann::json::parse(
                 R"({"saves": 2, "mm/vlm": {"per_namespace": 1, "vision": {"searches": 3}}})"));
}

TEST_CASE("latency histogram: buckets are upper-inclusive, the last holds the rest") {
  LatencyHistogram h;
  h.observe_ns(0);
  h.observe_ns(1'000);  // exactly the first bound
  h.observe_ns(1'001);
  h.observe_ns(10'000'000'000);
  h.observe_ns(10'000'000'001);
  auto s = h.snapshot();
  CHECK(s.counts[0] == 2);
  CHECK(s.counts[1] == 1);
  CHECK(s.counts[LatencyHistogram::kBuckets - 1] == 1);
  CHECK(s.counts[LatencyHistogram::kBuckets] == 1);
  CHECK(s.count() == 5);
  CHECK(s.sum_ns == 20'000'002'002);
  HistogramData d = s.data();
  CHECK(d.bounds.size() + 1 == d.counts.size());
  CHECK(d.bounds.front() == Approx(1e-6));
  CHECK(d.bounds.back() == Approx(10.0));
  CHECK(d.sum == Approx(20.000002002));
}

TEST_CASE("latency histogram: observations from many threads all count") {
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&h, t] {
      for (uint64_t i = 0; i < 20000; ++i) h.observe_ns(1'000 * (i % 7) + uint64_t(t));
    });
  for (auto& t : threads) t.join();
  auto s = h.snapshot();
  CHECK(s.count() == 6 * 20000);
  uint64_t want = 0;
  for (int t = 0; t < 6; ++t)
    for (uint64_t i = 0; i < 20000; ++i) want += 1'000 * (i % 7) + uint64_t(t);
  CHECK(s.sum_ns == want);
}
