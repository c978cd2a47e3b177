// End to end through a real kvtierd: put, lookup, get, release, remove, several processes.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
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

std::unique_ptr<Client> connect(const Daemon& d) {
  auto c = Client::connect(d.socket());
  REQUIRE(c.is_ok());
  return std::move(c).value();
}

nlohmann::json stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value());
}

std::vector<BlockKey> keys_for(std::string_view ns, size_t n, uint32_t salt = 0) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), salt);
  return chain_keys(ns, tokens, 16);
}

}  // namespace

TEST_CASE("put, lookup, get and release round trip every byte") {
  Daemon d;
  auto c = connect(d);
  const std::string ns = "model-a/fp16/v1";
  auto keys = keys_for(ns, 4);
  for (const auto& k : keys) {
    KvBlock b(k, 64);
    REQUIRE(c->put(ns, k, b.tensors).is_ok());
  }
  CHECK(c->lookup(ns, keys).value() == 4);
  CHECK(c->lookup("model-b/fp16/v1", keys).value() == 0);  // the namespace is part of the key

  auto lease = c->get(ns, keys);
  REQUIRE(lease.is_ok());
  REQUIRE(lease->size() == 4);
  for (const auto& b : lease->blocks()) CHECK(kvtier::testing::check_kv_block(b, 64));
  CHECK(stats(*c)["leases"] == 4);
  REQUIRE(lease->release().is_ok());
  CHECK(stats(*c)["leases"] == 0);

  SECTION("a second put of a key is refused: blocks are immutable") {
    KvBlock b(keys[0], 64);
    CHECK(c->put(ns, keys[0], b.tensors).code() == Errc::kAlreadyExists);
  }
  SECTION("missing keys come back not found, the rest leased") {
    std::vector<BlockKey> ask = {keys[0], BlockKey{1, 1}, keys[2]};
    auto l = c->get(ns, ask).value();
    CHECK(l.found() == 2);
    CHECK(l.block(1).code == Errc::kNotFound);
  }
  SECTION("remove of a leased block is deferred to the last release") {
    auto l = c->get(ns, std::span(keys).first(1)).value();
    auto r = c->remove(ns, std::span(keys).first(1)).value();
    CHECK(r.deferred == 1);
    CHECK(c->lookup(ns, keys).value() == 0);
    CHECK(kvtier::testing::check_kv_block(l.block(0), 64));  // still readable
    REQUIRE(l.release().is_ok());
    CHECK(stats(*c)["tiers"]["host"]["blocks"] == 3);
  }
}

TEST_CASE("longest-prefix lookup over a chain of 1,000 keys with holes") {
  Daemon d;
  auto c = connect(d);
  const std::string ns = "chain";
  auto keys = keys_for(ns, 1000);
  std::vector<uint8_t> one(64, 1);
  std::vector<TensorIn> t = {TensorIn{"x", DType::kU8, {64}, one.data()}};
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 700 || i == 900) continue;  // holes
    REQUIRE(c->put(ns, keys[i], t).is_ok());
  }
  CHECK(c->lookup(ns, keys).value() == 700);
  CHECK(c->lookup(ns, std::span(keys).subspan(701)).value() == 199);
  CHECK(c->lookup(ns, std::span(keys).first(10)).value() == 10);
  std::vector<BlockKey> hole_first = {keys[900], keys[0]};
  CHECK(c->lookup(ns, hole_first).value() == 0);
}

TEST_CASE("several client processes put and get concurrently; every byte checked") {
  DaemonOptions o;
  o.host_bytes = 256ull << 20;
  Daemon d(o);
  const int kProcs = 4, kBlocks = 40;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Each child writes its own chain, then reads back its own and its neighbour's.
      int bad = 0;
      auto c = Client::connect(d.socket());
      if (!c) ::_exit(10);
      const std::string ns = "shared";
      auto mine = keys_for(ns, kBlocks, 100000 * p);
      for (const auto& k : mine) {
        KvBlock b(k, 32 + p);
        Status st = (*c)->put(ns, k, b.tensors);
        if (!st && st.code() != Errc::kAlreadyExists) ++bad;
      }
      auto lease = (*c)->get(ns, mine);
      if (!lease) ::_exit(11);
      for (const auto& b : lease->blocks()) bad += !kvtier::testing::check_kv_block(b, 32 + p);
      ::_exit(bad == 0 ? 0 : 12);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  // And the parent reads every child's blocks again.
  auto c = connect(d);
  for (int p = 0; p < kProcs; ++p) {
    auto keys = keys_for("shared", kBlocks, 100000 * p);
    auto lease = c->get("shared", keys).value();
    REQUIRE(lease.found() == kBlocks);
    for (const auto& b : lease.blocks()) CHECK(kvtier::testing::check_kv_block(b, 32 + p));
  }
  CHECK(stats(*c)["sessions"] == 1);
}

TEST_CASE("busy polling: polling clients on one polling io thread, slow replies, a prompt drain") {
  DaemonOptions o;
  o.host_bytes = 256ull << 20;
  o.io_threads = 1;  // every connection on the one polling thread
  o.busy_poll_us = 2000;
  Daemon d(o);
  // Four threads, each with its own connection (three polling, one not), interleave puts and
  // gets; every byte is checked.
  const int kThreads = 4, kBlocks = 30;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ClientOptions co;
      co.socket = d.socket();
      co.busy_poll_us = t == 0 ? 0 : 500;
      auto c = Client::connect(co);
      if (!c) return void(bad += 1000);
      const std::string ns = "poll";
      auto keys = keys_for(ns, kBlocks, 1000 * t);
      for (const auto& k : keys) {
        KvBlock b(k, 8 + t);
        if (!(*c)->put(ns, k, b.tensors)) ++bad;
        auto lease = (*c)->get(ns, std::span(&k, 1));
        if (!lease || !kvtier::testing::check_kv_block(lease->blocks()[0], 8 + t)) ++bad;
      }
      auto n = (*c)->lookup(ns, keys);
      if (!n || *n != kBlocks) ++bad;
    });
  for (auto& t : threads) t.join();
  CHECK(bad == 0);
  // A reply that takes far longer than the client's poll window (an 8 MiB put): the client
  // stops polling and sleeps until it comes.
  ClientOptions co;
  co.socket = d.socket();
  co.busy_poll_us = 20;
  auto c = Client::connect(co).value();
  const BlockKey big = keys_for("poll", 1, 999999)[0];
  KvBlock b(big, 16384);
  REQUIRE(c->put("poll", big, b.tensors).is_ok());
  {
    auto lease = c->get("poll", std::span(&big, 1)).value();
    CHECK(kvtier::testing::check_kv_block(lease.blocks()[0], 16384));
  }
  c.reset();
  // The polling io thread still stops on SIGTERM, and at once.
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(d.stop() == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("a client killed with SIGKILL while holding leases is reclaimed") {
  Daemon d;
  auto c = connect(d);
  auto keys = keys_for("ns", 8);
  for (const auto& k : keys) {
    KvBlock b(k, 16);
    REQUIRE(c->put("ns", k, b.tensors).is_ok());
  }
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto cc = Client::connect(d.socket());
    if (!cc) ::_exit(1);
    auto lease = (*cc)->get("ns", keys);  // held until killed
    char x = lease ? 'y' : 'n';
    (void)::write(ready[1], &x, 1);
    ::pause();
    ::_exit(0);
  }
  char x = 0;
  REQUIRE(::read(ready[0], &x, 1) == 1);
  REQUIRE(x == 'y');
  CHECK(stats(*c)["leases"] == 8);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  uint64_t leases = 8;
  while (std::chrono::steady_clock::now() < deadline) {
    leases = stats(*c)["leases"].get<uint64_t>();
    if (leases == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(leases == 0);
  // The daemon keeps serving the others.
  auto lease = c->get("ns", keys).value();
  CHECK(lease.found() == 8);
  auto j = stats(*c);
  CHECK(j["counters"]["leases_reclaimed"] == 8);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE("a host tier full of leased blocks refuses a put with no space; nothing lost") {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  Daemon d(o);
  auto c = connect(d);
  std::vector<Lease> held;
  std::vector<BlockKey> stored;
  auto keys = keys_for("full", 64);
  Status last;
  for (const auto& k : keys) {
    KvBlock b(k, 2048);  // 1 MiB per block
    last = c->put("full", k, b.tensors);
    if (!last) break;
    stored.push_back(k);
    held.push_back(c->get("full", std::span(&k, 1)).value());
  }
  REQUIRE_FALSE(last.is_ok());
  CHECK(last.code() == Errc::kNoSpace);
  CHECK_THAT(last.message(), Catch::Contains("leased"));
  CHECK(stored.size() >= 10);
  // Every block acknowledged is still there and intact.
  CHECK(c->lookup("full", stored).value() == stored.size());
  for (auto& l : held) CHECK(kvtier::testing::check_kv_block(l.block(0), 2048));
  auto j = stats(*c);
  CHECK(j["counters"]["puts_no_space"].get<uint64_t>() >= 1);
  CHECK(j["pending_puts"] == 0);
  // Releasing makes room again (eviction of unleased blocks).
  held.clear();
  KvBlock b(keys.back(), 2048);
  CHECK(c->put("full", keys.back(), b.tensors).is_ok());
}
