// The codec's counters and the sampled NF4 error: what encode_block counts, what
// measure_nf4_error finds against an independent decode, and how Nf4ErrorSampler samples and
// aggregates per namespace.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/counters_json.h"
#include "common/prometheus_text.h"
#include "engine/block_codec.h"
#include "kernels/nf4.h"

using namespace kvtier;

namespace {

// Staged block: an fp32 tensor "k" [rows, 128] of N(0, 1) values and an i32 tensor "ids".
struct Staged {
  BlockLayout client;
  std::vector<std::byte> bytes;
  std::vector<float> k;
};

Staged staged(uint64_t rows, uint32_t seed) {
  Staged s;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (uint64_t i = 0; i < rows * 128; ++i) s.k.push_back(dist(rng));
  TensorLayout k;
  k.name = "k";
  k.dtype = DType::kF32;
  k.shape = {rows, 128};
  k.raw_bytes = k.bytes = rows * 128 * 4;
  TensorLayout ids;
  ids.name = "ids";
  ids.dtype = DType::kI32;
  ids.shape = {rows};
  ids.offset = k.raw_bytes;
  ids.raw_bytes = ids.bytes = rows * 4;
  s.client.tensors = {k, ids};
  s.client.total_bytes = k.raw_bytes + ids.raw_bytes;
  s.bytes.resize(s.client.total_bytes);
  std::memcpy(s.bytes.data(), s.k.data(), k.raw_bytes);
  return s;
}

config::NamespaceRule nf4_rule() {
  config::NamespaceRule r;
  r.codec = Codec::kNf4;
  return r;
}

}  // namespace

TEST_CASE("encode_block counts tensors, bytes and failures per codec") {
  Staged s = staged(64, 1);
  BlockLayout stored = plan_stored_layout(s.client, nf4_rule());
  std::vector<std::byte> dest(stored.total_bytes);
  CodecCounters counters;
  REQUIRE(encode_block(s.client, s.bytes.data(), stored, dest.data(), nf4_options(nf4_rule()),
                       &counters)
              .is_ok());
  float nan = std::nanf("");
  std::memcpy(s.bytes.data() + 8, &nan, 4);
  CHECK_FALSE(encode_block(s.client, s.bytes.data(), stored, dest.data(), nf4_options(nf4_rule()),
                           &counters));

  nlohmann::json j;
  JsonCounterVisitor v(j);
  counters.visit_counters(v);
  CHECK(j["nf4_tensors"] == 1);
  CHECK(j["nf4_input_bytes"] == 64 * 128 * 4);
  CHECK(j["nf4_output_bytes"] == stored.tensors[0].bytes);
  CHECK(j["raw_tensors"] == 1);
  CHECK(j["raw_input_bytes"] == 64 * 4);
  CHECK(j["raw_output_bytes"] == 64 * 4);
  CHECK(j["encode_failures"] == 1);
  CHECK(j["encode_us_total"].get<double>() > 0);
}

TEST_CASE("measure_nf4_error: max and sum of |decoded - source| over the NF4 tensors only") {
  Staged s = staged(32, 2);
  BlockLayout stored = plan_stored_layout(s.client, nf4_rule());
  std::vector<std::byte> dest(stored.total_bytes);
  REQUIRE(
      encode_block(s.client, s.bytes.data(), stored, dest.data(), nf4_options(nf4_rule())).is_ok());

  const auto e = measure_nf4_error(s.client, s.bytes.data(), stored, dest.data());
  REQUIRE(e.is_ok());
  // Independently: decode with the codec's own API and compare.
  std::vector<float> dec(s.k.size());
  REQUIRE(nf4::decode({dest.data() + stored.tensors[0].offset, stored.tensors[0].bytes},
                      DType::kF32, std::as_writable_bytes(std::span(dec)))
              .is_ok());
  double max = 0, sum = 0;
  for (size_t i = 0; i < dec.size(); ++i) {
    const double d = std::fabs(double(dec[i]) - double(s.k[i]));
    max = std::max(max, d);
    sum += d;
  }
  CHECK(e->tensors == 1);  // "ids" is stored raw: not measured
  CHECK(e->values == s.k.size());
  CHECK(e->max_abs == max);
  CHECK(e->sum_abs == Approx(sum));
  CHECK(e->max_abs > 0);
  CHECK(e->sum_abs / double(e->values) == Approx(0.073).margin(0.01));  // N(0,1), blocks of 64

  SECTION("a damaged encoding is reported, not measured") {
    std::memset(dest.data() + stored.tensors[0].offset, 0, 8);  // the NF4 header's magic
    CHECK(measure_nf4_error(s.client, s.bytes.data(), stored, dest.data()).status().code() ==
          Errc::kCorrupt);
  }
}

TEST_CASE("Nf4ErrorSampler: rates, per-namespace aggregation, bounded namespaces") {
  CHECK_FALSE(Nf4ErrorSampler(0.0).sample());
  Nf4ErrorSampler always(1.0), half(0.5);
  int taken = 0;
  for (int i = 0; i < 4000; ++i) {
    CHECK(always.sample());
    taken += half.sample() ? 1 : 0;
  }
  CHECK(taken > 1600);
  CHECK(taken < 2400);

  always.record("a", Nf4Error{2, 100, 0.5, 7.0});
  always.record("a", Nf4Error{1, 50, 0.25, 3.0});
  always.record("b\"x", Nf4Error{1, 10, 1.5, 2.0});
  nlohmann::json j;
  JsonCounterVisitor v(j, {"namespace"});
  always.visit_counters(v);
  CHECK(j["a"]["sampled_tensors"] == 3);
  CHECK(j["a"]["sampled_values"] == 150);
  CHECK(j["a"]["abs_error_max"] == 0.5);
  CHECK(j["a"]["abs_error_total"] == 10.0);
  CHECK(j["a"]["abs_error_mean"].get<double>() == Approx(10.0 / 150));
  CHECK(j["b\"x"]["abs_error_max"] == 1.5);

  PrometheusText p;
  always.visit_counters(p);
  CHECK(p.dropped() == 0);
  CHECK_THAT(p.text(), Catch::Contains("kvtier_nf4_abs_error_max{namespace=\"b\\\"x\"} 1.5\n"));

  Nf4ErrorSampler many(1.0);
  for (size_t i = 0; i < Nf4ErrorSampler::kMaxNamespaces + 3; ++i)
    many.record("ns" + std::to_string(i), Nf4Error{1, 1, 0.1, 0.1});
  nlohmann::json m;
  JsonCounterVisitor mv(m, {"namespace"});
  many.visit_counters(mv);
  CHECK(m.size() == Nf4ErrorSampler::kMaxNamespaces);
  PrometheusText mp;
  many.visit_counters(mp);
  CHECK_THAT(mp.text(), Catch::Contains("kvtier_nf4_untracked_samples_total 3\n"));
}
