// The codec's counters (engine/block_codec.cpp encodes what seals store in the host tier) and
// the sampled NF4 quantization error per namespace ([metrics] nf4_error_sample).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/counters.h"
#include "common/layout.h"
#include "common/mutex.h"

namespace kvtier {

// Tensors encoded, bytes in (as staged) and out (as stored), per codec; encode time; inputs
// the codec refused.  Relaxed atomics: encodes run unlocked on the io threads.
class CodecCounters {
 public:
  // A block (or the fusion tensors of one) encoded into `stored` in `ns` nanoseconds.
  void encoded(const BlockLayout& stored, uint64_t ns);
  void failed() { failures_.fetch_add(1, std::memory_order_relaxed); }
  // kvtier_codec_* (JSON: "codec").
  void visit_counters(CounterVisitor& v) const;

 private:
  struct PerCodec {
    std::atomic<uint64_t> tensors{0}, input_bytes{0}, output_bytes{0};
  };
  std::array<PerCodec, 2> by_codec_;  // indexed by Codec (kRaw, kNf4)
  std::atomic<uint64_t> failures_{0}, encode_ns_{0};
};

// The error of NF4 tensors against their source, over some values.
struct Nf4Error {
  uint64_t tensors = 0;
  uint64_t values = 0;
  double max_abs = 0;  // the largest |decoded - source|
  double sum_abs = 0;  // the sum of |decoded - source|
};

// Which seals are measured, and the errors measured so far per namespace.  At most
// kMaxNamespaces namespaces are kept (the label's cardinality is bounded); samples of others
// are counted unlabelled.
class Nf4ErrorSampler {
 public:
  static constexpr size_t kMaxNamespaces = 1024;

  explicit Nf4ErrorSampler(double rate) : rate_(rate) {}
  // Whether to measure this seal: true with probability `rate` (thread-safe; no random number
  // is drawn when the rate is 0 or 1).
  bool sample() const;
  void record(std::string_view ns, const Nf4Error& e);
  // kvtier_nf4_* labelled namespace (JSON: "nf4_error", one object per namespace).
  void visit_counters(CounterVisitor& v) const;

 private:
  const double rate_;
  mutable Mutex mu_;
  std::map<std::string, Nf4Error, std::less<>> by_ns_ GUARDED_BY(mu_);
  uint64_t untracked_ GUARDED_BY(mu_) = 0;  // samples of namespaces past kMaxNamespaces
};

}  // namespace kvtier
