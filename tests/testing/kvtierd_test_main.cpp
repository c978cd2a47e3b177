// The test build of kvtierd (kvtierd_test): the product daemon plus what tests inject through
// ServerHooks, read from the environment here, in test code, never by the product:
//   KVTIER_TEST_DISK_FAULTS="op:kind:skip:count:probability[,...]"  (op = read, write or sync;
//     kind = error, short or nospace; count -1 = unlimited): the disk tier runs on a
//     thread-pool device wrapped in the fault-injecting device (devices/fault_device.h);
//   KVTIER_TEST_INDEX_SAVE_DELAY_MS=N: each periodic index save sleeps N ms first.
// tests/testing/daemon.h starts this binary when DaemonOptions::test_build is set.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "daemon/daemon_main.h"
#include "tests/testing/devices/fault_device.h"

namespace kvtier {
namespace {

Result<std::unique_ptr<Device>> fault_injecting_device(const DiskOptions& o, std::string spec) {
  auto plan = std::make_shared<FaultPlan>();
  std::stringstream rules(spec);
  for (std::string rule; std::getline(rules, rule, ',');) {
    std::stringstream fields(rule);
    std::string op, kind, skip, count, prob;
    std::getline(fields, op, ':');
    std::getline(fields, kind, ':');
    std::getline(fields, skip, ':');
    std::getline(fields, count, ':');
    std::getline(fields, prob, ':');
    FaultRule r;
    r.op = op == "read"   ? FaultRule::Op::kRead
           : op == "sync" ? FaultRule::Op::kSync
                          : FaultRule::Op::kWrite;
    r.kind = kind == "short"     ? FaultRule::Kind::kShort
             : kind == "nospace" ? FaultRule::Kind::kNoSpace
                                 : FaultRule::Kind::kError;
    try {
      r.skip = skip.empty() ? 0 : std::stoull(skip);
      r.count = count.empty() || count == "-1" ? UINT64_MAX : std::stoull(count);
      r.probability = prob.empty() ? 1.0 : std::stod(prob);
    } catch (const std::exception&) {
      return error(Errc::kInvalidArgument, "bad fault rule '" + rule + "'");
    }
    plan->add(r);
  }
  FileDeviceOptions fo;
  fo.dir = o.dir;
  fo.o_direct = o.o_direct;
  fo.threads = o.threads;
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  auto inner = make_thread_device(fo, "fault injection");
  if (!inner) return inner.status();
  spdlog::warn("disk tier: TEST FAULT INJECTION ACTIVE ({})", spec);
  return make_fault_device(std::move(inner).value(), plan);
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  kvtier::ServerHooks hooks;
  if (const char* faults = std::getenv("KVTIER_TEST_DISK_FAULTS"); faults && *faults) {
    hooks.engine.disk_device = [spec = std::string(faults)](const kvtier::DiskOptions& o) {
      return kvtier::fault_injecting_device(o, spec);
    };
  }
  if (const char* d = std::getenv("KVTIER_TEST_INDEX_SAVE_DELAY_MS"); d && *d) {
    hooks.index_save_delay_ms = static_cast<uint32_t>(std::strtoul(d, nullptr, 10));
    spdlog::warn("KVTIER_TEST_INDEX_SAVE_DELAY_MS={}: index saves delayed (tests only)",
                 hooks.index_save_delay_ms);
  }
  return kvtier::daemon_main(argc, argv, std::move(hooks));
}
