// A Device wrapper that injects faults, for tests (leveldb's fault_injection_test, CacheLib's
// navy mocks).  Rules live in a FaultPlan the test keeps a shared_ptr to, so faults can be
// switched on and off while the tier owns the device.
//
// Thread-safety: FaultPlan is guarded by its own mutex; FaultDevice forwards to the inner
// device and adds no other state.
#pragma once

#include <mutex>
#include <optional>
#include <random>

#include "tiers/disk/device.h"

namespace kvtier {

struct FaultRule {
  enum class Op : uint8_t { kRead, kWrite, kSync };
  enum class Kind : uint8_t {
    kError,    // fails with EIO
    kShort,    // writes/reads only the first half, reports that count
    kNoSpace,  // fails with ENOSPC before writing anything
  };
  Op op = Op::kWrite;
  Kind kind = Kind::kError;
  uint64_t skip = 0;            // let this many matching operations pass first
  uint64_t count = UINT64_MAX;  // then fire this many times
  double probability = 1.0;     // per matching operation, after skip
  std::function<bool(uint32_t region, uint64_t offset, size_t bytes)> match;  // empty: all
};

class FaultPlan {
 public:
  void add(FaultRule rule);
  void clear();
  uint64_t injected() const;
  // The rule that fires for this operation, if any (counts it).
  std::optional<FaultRule::Kind> decide(FaultRule::Op op, uint32_t region, uint64_t offset,
                                        size_t bytes);

 private:
  struct Armed {
    FaultRule rule;
    uint64_t seen = 0, fired = 0;
  };
  mutable std::mutex mu_;
  std::vector<Armed> rules_;    // guarded by mu_
  std::mt19937_64 rng_{12345};  // guarded by mu_
  uint64_t injected_ = 0;       // guarded by mu_
};

std::unique_ptr<Device> make_fault_device(std::unique_ptr<Device> inner,
                                          std::shared_ptr<FaultPlan> plan);

}  // namespace kvtier
