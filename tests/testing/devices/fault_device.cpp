#include "tests/testing/devices/fault_device.h"

#include <cerrno>

namespace kvtier {

void FaultPlan::add(FaultRule rule) {
  std::lock_guard lock(mu_);
  rules_.push_back({std::move(rule)});
}
void FaultPlan::clear() {
  std::lock_guard lock(mu_);
  rules_.clear();
}
uint64_t FaultPlan::injected() const {
  std::lock_guard lock(mu_);
  return injected_;
}
std::optional<FaultRule::Kind> FaultPlan::decide(FaultRule::Op op, uint32_t region, uint64_t offset,
                                                 size_t bytes) {
  std::lock_guard lock(mu_);
  for (auto& a : rules_) {
    if (a.rule.op != op || (a.rule.match && !a.rule.match(region, offset, bytes))) continue;
    if (a.seen++ < a.rule.skip || a.fired >= a.rule.count) continue;
    if (a.rule.probability < 1.0 &&
        std::uniform_real_distribution<double>(0, 1)(rng_) >= a.rule.probability)
      continue;
    ++a.fired;
    ++injected_;
    return a.rule.kind;
  }
  return std::nullopt;
}

namespace {

class FaultDevice final : public Device {
 public:
  FaultDevice(std::unique_ptr<Device> inner, std::shared_ptr<FaultPlan> plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}
  std::string describe() const override { return inner_->describe() + " + faults"; }
  Status create_region(uint32_t r, uint64_t b) override { return inner_->create_region(r, b); }
  Status open_region(uint32_t r) override { return inner_->open_region(r); }
  Status remove_region(uint32_t r) override { return inner_->remove_region(r); }
  std::vector<uint32_t> list_regions() override { return inner_->list_regions(); }
  Result<uint64_t> region_size(uint32_t r) override { return inner_->region_size(r); }
  void submit() override { inner_->submit(); }
  Status sync(uint32_t r) override {
    if (auto k = plan_->decide(FaultRule::Op::kSync, r, 0, 0))
      return errno_status(*k == FaultRule::Kind::kNoSpace ? ENOSPC : EIO, "fdatasync (injected)");
    return inner_->sync(r);
  }
  void write(uint32_t r, uint64_t off, std::span<const std::byte> buf, IoDone done) override {
    auto k = plan_->decide(FaultRule::Op::kWrite, r, off, buf.size());
    if (!k) return inner_->write(r, off, buf, std::move(done));
    if (*k == FaultRule::Kind::kShort) {  // the first half (aligned) lands, the rest does not
      size_t half = buf.size() / 2 / kDiskAlign * kDiskAlign;
      if (half == 0) return done(size_t(0));
      return inner_->write(r, off, buf.first(half), std::move(done));
    }
    done(errno_status(*k == FaultRule::Kind::kNoSpace ? ENOSPC : EIO, "write (injected)"));
  }
  void read(uint32_t r, uint64_t off, std::span<std::byte> buf, IoDone done) override {
    auto k = plan_->decide(FaultRule::Op::kRead, r, off, buf.size());
    if (!k) return inner_->read(r, off, buf, std::move(done));
    if (*k == FaultRule::Kind::kShort) {
      size_t half = buf.size() / 2 / kDiskAlign * kDiskAlign;
      if (half == 0) return done(size_t(0));
      return inner_->read(r, off, buf.first(half), std::move(done));
    }
    done(errno_status(EIO, "read (injected)"));
  }

 private:
  std::unique_ptr<Device> inner_;
  std::shared_ptr<FaultPlan> plan_;
};

}  // namespace

std::unique_ptr<Device> make_fault_device(std::unique_ptr<Device> inner,
                                          std::shared_ptr<FaultPlan> plan) {
  return std::make_unique<FaultDevice>(std::move(inner), std::move(plan));
}

}  // namespace kvtier
