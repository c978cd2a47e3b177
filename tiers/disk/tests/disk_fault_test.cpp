// Faults injected under the disk tier: failed, short and ENOSPC writes, failed syncs, failed
// and short reads.  Errors reach done/read; nothing reported stored is lost; the tier serves on.
#include "tiers/disk/tests/disk_test_util.h"

using namespace kvtier;
using namespace kvtier::testing;

namespace {

struct Faulty {
  std::shared_ptr<FaultPlan> plan = std::make_shared<FaultPlan>();
  Backend backend;
  DiskOptions opt;
  std::unique_ptr<DiskTier> tier;
  Faulty(const std::string& backend_name, const std::string& dir) : backend{backend_name} {
    opt.dir = scratch_dir(dir);
    opt.region_bytes = 2u << 20;
    opt.capacity_bytes = 1ull << 30;
    opt.index_map_bytes = 1ull << 30;
    opt.durable = false;  // the fdatasync section turns it back on
    reopen();
  }
  void reopen() {
    tier.reset();
    auto t = DiskTier::open(opt, make_fault_device(backend.make(opt.dir), plan));
    REQUIRE(t.is_ok());
    tier = std::move(t.value());
  }
};

bool payload_only(uint32_t, uint64_t offset, size_t) {
  return offset >= 4096;  // leave region headers alone
}

// Writes 30 blocks and checks: every ok one reads back intact (also after a reopen), every
// failed one is absent, and the counters agree.
void write_and_check(Faulty& f, const std::string& label, Errc expected) {
  INFO(label << " on " << f.backend.name);
  std::vector<Status> st;
  const size_t n = 96u << 10;
  for (uint64_t i = 0; i < 30; ++i)
    st.push_back(put(*f.tier, key_of(i), layout_of(n), random_bytes(n, i), false));
  uint64_t ok = 0;
  for (uint64_t i = 0; i < 30; ++i) {
    if (st[i]) {
      ++ok;
    } else {
      CHECK(st[i].code() == expected);
      CHECK_FALSE(f.tier->find("m", key_of(i)));
    }
  }
  CHECK(ok > 0);
  CHECK(ok < 30);
  CHECK(f.tier->disk_usage().write_errors == 30 - ok);
  f.plan->clear();
  for (int round = 0; round < 2; ++round) {
    for (uint64_t i = 0; i < 30; ++i) {
      if (!st[i]) continue;
      std::vector<std::byte> back;
      REQUIRE(get(*f.tier, key_of(i), back).is_ok());
      CHECK(back == random_bytes(n, i));
    }
    CHECK(f.tier->disk_usage().blocks == ok);
    f.reopen();
  }
  // Still serving: a failed key can be written again.
  for (uint64_t i = 0; i < 30; ++i)
    if (!st[i]) CHECK(put(*f.tier, key_of(i), layout_of(n), random_bytes(n, i)).is_ok());
  CHECK(f.tier->disk_usage().blocks == 30);
}

}  // namespace

TEST_CASE("failed, short and ENOSPC writes are reported and lose nothing stored") {
  std::string name = GENERATE(as<std::string>{}, "threads", "memory");
  SECTION("EIO on every third write") {
    Faulty f(name, "eio-" + name);
    f.plan->add(
        {FaultRule::Op::kWrite, FaultRule::Kind::kError, 0, UINT64_MAX, 1.0,
         [n = 0](uint32_t, uint64_t off, size_t) mutable { return off >= 4096 && ++n % 3 == 0; }});
    write_and_check(f, "eio", Errc::kIo);
  }
  SECTION("short writes") {
    Faulty f(name, "short-" + name);
    f.plan->add({FaultRule::Op::kWrite, FaultRule::Kind::kShort, 2, 5, 1.0, payload_only});
    write_and_check(f, "short", Errc::kIo);
  }
  SECTION("ENOSPC, then space again") {
    Faulty f(name, "enospc-" + name);
    f.plan->add({FaultRule::Op::kWrite, FaultRule::Kind::kNoSpace, 10, 8, 1.0, payload_only});
    write_and_check(f, "enospc", Errc::kNoSpace);
  }
  SECTION("random failures with probability 0.3") {
    Faulty f(name, "prob-" + name);
    f.plan->add({FaultRule::Op::kWrite, FaultRule::Kind::kError, 0, UINT64_MAX, 0.3, payload_only});
    write_and_check(f, "random", Errc::kIo);
  }
  SECTION("fdatasync failures fail their batch") {
    Faulty f(name, "sync-" + name);
    f.opt.durable = true;
    f.reopen();
    f.plan->add({FaultRule::Op::kSync, FaultRule::Kind::kError, 3, 4, 1.0, {}});
    write_and_check(f, "sync", Errc::kIo);
  }
  SECTION("region creation failing (header write ENOSPC)") {
    Faulty f(name, "hdr-" + name);
    f.plan->add({FaultRule::Op::kWrite, FaultRule::Kind::kNoSpace, 1, 1, 1.0,
                 [](uint32_t, uint64_t off, size_t) { return off == 0; }});
    write_and_check(f, "header", Errc::kNoSpace);
  }
}

TEST_CASE("failed and short reads are kIo, keep the entry, and count") {
  std::string name = GENERATE(as<std::string>{}, "threads", "memory");
  Faulty f(name, "rd-" + name);
  const size_t n = 128u << 10;
  for (uint64_t i = 0; i < 4; ++i)
    REQUIRE(put(*f.tier, key_of(i), layout_of(n), normal_fp16(n, i)).is_ok());
  f.plan->add({FaultRule::Op::kRead, FaultRule::Kind::kError, 0, 1, 1.0, {}});
  f.plan->add({FaultRule::Op::kRead, FaultRule::Kind::kShort, 0, 1, 1.0, {}});
  std::vector<std::byte> back;
  CHECK(get(*f.tier, key_of(0), back).code() == Errc::kIo);
  CHECK(get(*f.tier, key_of(1), back).code() == Errc::kIo);
  CHECK(f.plan->injected() == 2);
  auto u = f.tier->disk_usage();
  CHECK(u.read_errors == 2);
  CHECK(u.corrupt_dropped == 0);
  CHECK(u.blocks == 4);  // an I/O error is not corruption: the entries stay
  for (uint64_t i = 0; i < 4; ++i) {
    REQUIRE(get(*f.tier, key_of(i), back).is_ok());
    CHECK(back == normal_fp16(n, i));
  }
}
