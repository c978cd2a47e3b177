#include "engine/codec_counters.h"

#include <algorithm>
#include <random>
#include <thread>
#include <vector>

namespace kvtier {

void CodecCounters::encoded(const BlockLayout& stored, uint64_t ns) {
  for (const TensorLayout& t : stored.tensors) {
    PerCodec& c = by_codec_[t.codec == Codec::kNf4 ? 1 : 0];
    c.tensors.fetch_add(1, std::memory_order_relaxed);
    c.input_bytes.fetch_add(t.raw_bytes, std::memory_order_relaxed);
    c.output_bytes.fetch_add(t.bytes, std::memory_order_relaxed);
  }
  encode_ns_.fetch_add(ns, std::memory_order_relaxed);
}

void CodecCounters::visit_counters(CounterVisitor& v) const {
  static constexpr std::string_view kNames[] = {"raw", "nf4"};
  // JSON keys per codec: "raw_tensors", "nf4_tensors", ...
  static constexpr std::string_view kTensors[] = {"raw_tensors", "nf4_tensors"};
  static constexpr std::string_view kIn[] = {"raw_input_bytes", "nf4_input_bytes"};
  static constexpr std::string_view kOut[] = {"raw_output_bytes", "nf4_output_bytes"};
  for (size_t i = 0; i < by_codec_.size(); ++i) {
    const Label codec[] = {{"codec", kNames[i]}};
    const PerCodec& c = by_codec_[i];
    v.counter(
        {"kvtier_codec_tensors_total", "tensors stored by seals into the host tier", kTensors[i]},
        codec, c.tensors.load(std::memory_order_relaxed));
    v.counter({"kvtier_codec_input_bytes_total",
               "bytes of those tensors as the clients staged them", kIn[i]},
              codec, c.input_bytes.load(std::memory_order_relaxed));
    v.counter({"kvtier_codec_output_bytes_total", "bytes of those tensors as stored", kOut[i]},
              codec, c.output_bytes.load(std::memory_order_relaxed));
  }
  v.counter({"kvtier_codec_encode_seconds_total",
             "seconds spent copying and quantizing staged tensors at seal", "encode_us_total", 1e6},
            {}, double(encode_ns_.load(std::memory_order_relaxed)) / 1e9);
  v.counter({"kvtier_codec_encode_failures_total",
             "seals refused by the codec (NaN or Inf in an NF4 tensor)", "encode_failures"},
            {}, failures_.load(std::memory_order_relaxed));
}

bool Nf4ErrorSampler::sample() const {
  if (rate_ <= 0) return false;
  if (rate_ >= 1) return true;
  thread_local std::minstd_rand rng(static_cast<unsigned>(
      std::random_device{}() ^ std::hash<std::thread::id>{}(std::this_thread::get_id())));
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng) < rate_;
}

void Nf4ErrorSampler::record(std::string_view ns, const Nf4Error& e) {
  MutexLock lock(mu_);
  auto it = by_ns_.find(ns);
  if (it == by_ns_.end()) {
    if (by_ns_.size() >= kMaxNamespaces) {
      untracked_ += e.tensors;
      return;
    }
    it = by_ns_.emplace(std::string(ns), Nf4Error{}).first;
  }
  Nf4Error& s = it->second;
  s.tensors += e.tensors;
  s.values += e.values;
  s.max_abs = std::max(s.max_abs, e.max_abs);
  s.sum_abs += e.sum_abs;
}

void Nf4ErrorSampler::visit_counters(CounterVisitor& v) const {
  std::vector<std::pair<std::string, Nf4Error>> copy;
  uint64_t untracked = 0;
  {
    MutexLock lock(mu_);
    copy.assign(by_ns_.begin(), by_ns_.end());
    untracked = untracked_;
  }
  for (const auto& [ns, e] : copy) {
    const Label labels[] = {{"namespace", ns}};
    v.counter({"kvtier_nf4_sampled_tensors_total",
               "NF4 tensors whose error was measured at seal (metrics.nf4_error_sample)",
               "sampled_tensors"},
              labels, e.tensors);
    v.counter({"kvtier_nf4_sampled_values_total", "values of those tensors", "sampled_values"},
              labels, e.values);
    v.counter({"kvtier_nf4_abs_error_total",
               "sum of |decoded - source| over the sampled values (rate / rate of "
               "kvtier_nf4_sampled_values_total = mean absolute error)",
               "abs_error_total"},
              labels, e.sum_abs);
    v.gauge({"kvtier_nf4_abs_error_max", "largest |decoded - source| of any sampled value",
             "abs_error_max"},
            labels, e.max_abs);
    v.gauge({"kvtier_nf4_abs_error_mean", "mean |decoded - source| over the sampled values",
             "abs_error_mean"},
            labels, e.values ? e.sum_abs / double(e.values) : 0.0);
  }
  v.counter({"kvtier_nf4_untracked_samples_total",
             "sampled NF4 tensors of namespaces past the 1024 tracked ones (not labelled)"},
            {}, untracked);
}

}  // namespace kvtier
