// The disk tier through the daemon: demotion on host eviction, promotion on get, persist
// namespaces, warm restart, SIGKILL, corruption, and the kvtierctl disk commands.  Each case
// runs on the io_uring backend (where the kernel allows it) and on the thread pool.
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

void must(const Status& s) {
  INFO(s.to_string());
  REQUIRE(s.is_ok());
}

nlohmann::json stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value());
}

std::vector<BlockKey> chain(std::string_view ns, size_t n) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), 1u);
  return chain_keys(ns, tokens, 16);
}

// Waits until every host eviction so far has been written (or dropped) by the disk tier.
void wait_demotions(Client& c) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    auto j = stats(c);
    auto& ctr = j["counters"];
    uint64_t settled = ctr["demotions"].get<uint64_t>() + ctr["demotions_dropped"].get<uint64_t>() +
                       ctr["demotion_failures"].get<uint64_t>() +
                       ctr["demotions_skipped"].get<uint64_t>();
    if (settled >= j["tiers"]["host"]["evictions"].get<uint64_t>()) return;
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

DaemonOptions small_host(const std::string& backend) {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  o.disk_backend = backend;
  o.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"durable/\"\ncodec = \"fp16\"\ndisk = \"persist\"\n"
      "[[namespace]]\nprefix = \"volatile/\"\ncodec = \"fp16\"\ndisk = \"off\"\n";
  return o;
}

int run(const std::string& cmd) {
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ctl(const Daemon& d) {
  return std::string(KVTIER_BINARY_DIR) + "/cli/kvtierctl -s " + d.socket() + " ";
}

}  // namespace

TEST_CASE("host evictions demote to disk; a get promotes them back, every byte intact") {
  const std::string backend = GENERATE("io_uring", "threads");
  DYNAMIC_SECTION("backend " << backend) {
    Daemon d(small_host(backend));
    auto c = Client::connect(d.socket()).value();
    auto health = nlohmann::json::parse(c->health_json().value());
    std::string active = health["tiers"]["disk"]["backend"];
    INFO("disk backend: " << active);
    if (backend == "threads") CHECK(active.rfind("threads", 0) == 0);
    auto keys = chain("m", 48);  // 48 x 1 MiB through a 16 MiB host tier
    for (const auto& k : keys) {
      KvBlock b(k, 2048);
      must(c->put("m", k, b.tensors));
    }
    wait_demotions(*c);
    auto j = stats(*c);
    CHECK(j["tiers"]["host"]["evictions"].get<uint64_t>() > 30);
    CHECK(j["counters"]["demotions"].get<uint64_t>() > 30);
    CHECK(c->lookup("m", keys).value() == keys.size());  // host or disk: the whole chain

    auto lease = c->get("m", std::span(keys).first(4)).value();
    REQUIRE(lease.found() == 4);
    for (const auto& b : lease.blocks()) CHECK(kvtier::testing::check_kv_block(b, 2048));
    j = stats(*c);
    CHECK(j["counters"]["promotions"].get<uint64_t>() >= 4);
  }
}

TEST_CASE("a burst of concurrent gets for one disk block reads it once") {
  Daemon d(small_host("threads"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 40);
  for (const auto& k : keys) {
    KvBlock b(k, 2048);
    must(c->put("m", k, b.tensors));
  }
  wait_demotions(*c);
  const uint64_t reads_before = stats(*c)["tiers"]["disk"]["reads"];
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      auto cc = Client::connect(d.socket());
      if (!cc) return;
      auto l = (*cc)->get("m", std::span(keys).first(1));
      if (l && l->found() == 1 && kvtier::testing::check_kv_block(l->block(0), 2048)) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 6);
  auto j = stats(*c);
  CHECK(j["tiers"]["disk"]["reads"].get<uint64_t>() - reads_before == 1);
  CHECK(j["counters"]["promotions"] == 1);
}

TEST_CASE("disk = off namespaces are not demoted; remove reaches the disk tier") {
  Daemon d(small_host("threads"));
  auto c = Client::connect(d.socket()).value();
  auto vkeys = chain("volatile/m", 24);
  for (const auto& k : vkeys) {
    KvBlock b(k, 2048);
    must(c->put("volatile/m", k, b.tensors));
  }
  wait_demotions(*c);
  CHECK(stats(*c)["counters"]["demotions"] == 0);
  CHECK(stats(*c)["counters"]["demotions_skipped"].get<uint64_t>() > 0);
  CHECK(c->lookup("volatile/m", vkeys).value() == 0);  // the oldest were evicted for good

  auto keys = chain("m", 24);
  for (const auto& k : keys) {
    KvBlock b(k, 2048);
    must(c->put("m", k, b.tensors));
  }
  wait_demotions(*c);
  REQUIRE(c->lookup("m", keys).value() == keys.size());
  REQUIRE(c->remove("m", std::span(keys).first(1)).value().removed == 1);
  CHECK(c->lookup("m", keys).value() == 0);
}

TEST_CASE("persist namespaces survive a restart; the index is served at once") {
  Daemon d(small_host("auto"));
  auto keys = chain("durable/m", 12);
  {
    auto c = Client::connect(d.socket()).value();
    for (const auto& k : keys) {
      KvBlock b(k, 512);
      must(c->put("durable/m", k, b.tensors));
    }
    CHECK(stats(*c)["counters"]["persisted"] == 12);
  }
  d.restart();
  auto c = Client::connect(d.socket()).value();
  CHECK(stats(*c)["tiers"]["host"]["blocks"] == 0);
  CHECK(c->lookup("durable/m", keys).value() == keys.size());
  auto lease = c->get("durable/m", keys).value();
  REQUIRE(lease.found() == keys.size());
  for (const auto& b : lease.blocks()) CHECK(kvtier::testing::check_kv_block(b, 512));
}

TEST_CASE("SIGKILL during heavy demotion: acknowledged persisted blocks all come back") {
  Daemon d(small_host("auto"));
  auto durable = chain("durable/m", 20);
  auto heavy = chain("m", 200);
  {
    auto c = Client::connect(d.socket()).value();
    for (size_t i = 0; i < heavy.size(); ++i) {
      KvBlock b(heavy[i], 1024);
      must(c->put("m", heavy[i], b.tensors));
      if (i % 10 == 0) {
        KvBlock p(durable[i / 10], 256);
        must(c->put("durable/m", durable[i / 10], p.tensors));  // acknowledged
      }
    }
  }
  d.kill9();  // demotions still queued or in flight
  d.restart();
  auto c = Client::connect(d.socket()).value();
  CHECK(c->lookup("durable/m", durable).value() == durable.size());
  auto lease = c->get("durable/m", durable).value();
  REQUIRE(lease.found() == durable.size());
  for (const auto& b : lease.blocks()) CHECK(kvtier::testing::check_kv_block(b, 256));
  // Every block the index lists reads back with a valid checksum.
  auto report = nlohmann::json::parse(c->verify().value());
  CHECK(report["corrupt"] == 0);
  CHECK(report["checked"].get<uint64_t>() >= durable.size());
}

TEST_CASE("bytes flipped in a region file: those blocks are dropped, the rest served") {
  Daemon d(small_host("threads"));
  auto keys = chain("durable/m", 16);
  {
    auto c = Client::connect(d.socket()).value();
    for (const auto& k : keys) {
      KvBlock b(k, 512);
      must(c->put("durable/m", k, b.tensors));
    }
  }
  d.stop();
  // Flip bytes inside the first payloads of every region file (past its 4 KiB header; the
  // blocks are ~200 KiB each after compression, so offsets 100 KiB and 300 KiB hit two).
  int flipped = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(d.state_dir() / "disk")) {
    if (!f.is_regular_file() || f.path().extension() != ".kvr") continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    for (std::streamoff off : {100 << 10, 300 << 10}) {
      io.seekp(off);
      io.write("\xde\xad\xbe\xef", 4);
    }
    ++flipped;
  }
  REQUIRE(flipped > 0);
  d.restart();
  auto c = Client::connect(d.socket()).value();
  auto lease = c->get("durable/m", keys).value();
  size_t good = 0;
  for (const auto& b : lease.blocks()) {
    if (!b.found()) continue;
    CHECK(kvtier::testing::check_kv_block(b, 512));  // never corrupt data
    ++good;
  }
  CHECK(good < keys.size());
  CHECK(good > 0);
  auto j = stats(*c);
  CHECK(j["tiers"]["disk"]["corrupt_dropped"].get<uint64_t>() >= keys.size() - good);
}

TEST_CASE("kvtierctl evict --tier disk, compact and verify") {
  Daemon d(small_host("threads"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("durable/m", 8);
  for (const auto& k : keys) {
    KvBlock b(k, 256);
    must(c->put("durable/m", k, b.tensors));
  }
  CHECK(run(ctl(d) + "verify > /dev/null") == 0);
  CHECK(run(ctl(d) + "compact > /dev/null") == 0);
  CHECK(run(ctl(d) + "evict --tier disk --namespace durable/m > /dev/null") == 0);
  CHECK(stats(*c)["tiers"]["disk"]["blocks"] == 0);
  CHECK(c->lookup("durable/m", keys).value() == keys.size());  // still in the host tier
  CHECK(run(ctl(d) + "evict --tier host --all > /dev/null") == 0);
  CHECK(c->lookup("durable/m", keys).value() == 0);
}

TEST_CASE("disk faults: the daemon keeps serving and loses nothing it acknowledged") {
  DaemonOptions o = small_host("threads");
  // 30% of disk writes fail with EIO, reads fail 20% of the time, and three writes hit ENOSPC.
  o.test_build = true;  // kvtierd_test: the fault-injecting disk device
  o.env = {
      {"KVTIER_TEST_DISK_FAULTS", "write:error:0:-1:0.3,read:error:0:-1:0.2,write:nospace:10:3:1"}};
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  auto durable = chain("durable/m", 24);
  std::vector<BlockKey> acked;
  for (const auto& k : durable) {
    KvBlock b(k, 256);
    Status st = c->put("durable/m", k, b.tensors);
    if (st) {
      acked.push_back(k);
    } else {
      INFO(st.to_string());
      CHECK((st.code() == Errc::kIo || st.code() == Errc::kNoSpace));
      CHECK_THAT(st.message(), Catch::Contains("not persisted"));
    }
  }
  CHECK(acked.size() > 0);
  CHECK(acked.size() < durable.size());
  // Write-back traffic keeps flowing: failed demotions are cache misses, never errors.
  auto keys = chain("m", 48);
  for (const auto& k : keys) {
    KvBlock b(k, 2048);
    must(c->put("m", k, b.tensors));
  }
  wait_demotions(*c);
  auto j = stats(*c);
  CHECK(j["counters"]["demotion_failures"].get<uint64_t>() > 0);
  size_t found = 0;
  for (size_t i = 0; i < keys.size(); i += 4) {  // a few at a time: leases pin host space
    auto lease = c->get("m", std::span(keys).subspan(i, 4)).value();
    for (const auto& b : lease.blocks()) {
      if (!b.found()) continue;
      ++found;
      CHECK(kvtier::testing::check_kv_block(b, 2048));  // whatever is served is intact
    }
  }
  CHECK(found > 16);  // more than the host tier holds: some came back from disk
  // Restart without faults: every acknowledged persist block is there.
  d.set_env({});
  d.restart();
  c = Client::connect(d.socket()).value();
  CHECK(c->lookup("durable/m", acked).value() == acked.size());
  auto back = c->get("durable/m", acked).value();
  REQUIRE(back.found() == acked.size());
  for (const auto& b : back.blocks()) CHECK(kvtier::testing::check_kv_block(b, 256));
}
