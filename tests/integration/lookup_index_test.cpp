// The shared lookup index against a real daemon: lookups answered without a round trip,
// per namespace, remapped after a resize and a restart, and consistent with gets under churn
// in several processes.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/child_process.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

constexpr uint64_t kTokens = 16;  // 8 KiB blocks

std::unique_ptr<Client> connect(const std::string& socket) {
  auto c = Client::connect(socket);
  REQUIRE(c.is_ok());
  return std::move(c).value();
}

BlockKey nth(uint64_t salt, uint64_t i) {
  return BlockKey{i * 0x9E3779B97F4A7C15ull + salt, (salt << 32) ^ (i + 1)};
}

uint64_t daemon_lookups(Client& c) {
  auto j = nlohmann::json::parse(c.stats_json().value());
  return j["counters"]["lookups"].get<uint64_t>();
}

LookupOptions source(LookupSource s) {
  LookupOptions o;
  o.source = s;
  return o;
}

}  // namespace

TEST_CASE("lookup index: lookups are answered from shared memory, per namespace") {
  Daemon d;
  auto c = connect(d.socket());
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 32; ++i) chain.push_back(nth(1, i));
  for (uint64_t i = 0; i < 20; ++i)
    REQUIRE(c->put("idx/a", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());
  // The same keys in another namespace: never seen through idx/a.
  for (uint64_t i = 20; i < 32; ++i)
    REQUIRE(c->put("idx/b", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());

  CHECK(c->lookup("idx/a", chain).value() == 20);
  CHECK(c->uses_lookup_index("idx/a"));
  const uint64_t before = daemon_lookups(*c);
  for (int i = 0; i < 10; ++i) CHECK(c->lookup("idx/a", chain).value() == 20);
  CHECK(c->lookup("idx/a", chain, source(LookupSource::kIndex)).value() == 20);
  CHECK(daemon_lookups(*c) == before);  // no round trip
  CHECK(c->lookup("idx/a", chain, source(LookupSource::kDaemon)).value() == 20);
  CHECK(daemon_lookups(*c) == before + 1);
  CHECK(c->lookup("idx/b", std::span(chain).subspan(20)).value() == 12);
  CHECK(c->lookup("idx/c", chain).value() == 0);

  // A remove and an admin eviction are seen at once (the daemon updates the index before it
  // replies).
  REQUIRE(c->remove("idx/a", std::span(&chain[10], 1)).is_ok());
  CHECK(c->lookup("idx/a", chain).value() == 10);
  REQUIRE(c->evict("idx/a", std::span(&chain[3], 1), false, TierSel::kAll).is_ok());
  CHECK(c->lookup("idx/a", chain).value() == 3);
  CHECK(c->lookup("idx/a", chain, source(LookupSource::kDaemon)).value() == 3);

  // A client that turned the index off asks the daemon.
  ClientOptions o;
  o.socket = d.socket();
  o.lookup_index = false;
  auto plain = Client::connect(o).value();
  CHECK(!plain->uses_lookup_index("idx/a"));
  CHECK(plain->lookup("idx/a", chain).value() == 3);
  CHECK(plain->lookup("idx/a", chain, source(LookupSource::kIndex)).status().code() ==
        Errc::kUnavailable);
}

TEST_CASE("lookup index: a namespace the peer may not read is not resolvable") {
  DaemonOptions opt;
  opt.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"secret/\"\nallow_uids = [12345]\n";
  Daemon d(opt);
  auto c = connect(d.socket());
  const BlockKey k = nth(2, 0);
  CHECK(!c->uses_lookup_index("secret/x"));
  CHECK(c->lookup("secret/x", std::span(&k, 1)).status().code() == Errc::kPermissionDenied);
  CHECK(c->uses_lookup_index("open/x"));
}

TEST_CASE("lookup index: a full index grows into a new memfd and clients remap") {
  DaemonOptions opt;
  opt.lookup_index_slots = 64;  // 48 entries before the first resize
  Daemon d(opt);
  auto c = connect(d.socket());
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 300; ++i) chain.push_back(nth(3, i));
  for (uint64_t i = 0; i < 10; ++i)
    REQUIRE(c->put("grow/a", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());
  CHECK(c->lookup("grow/a", chain).value() == 10);  // mapped generation 1
  for (uint64_t i = 10; i < 300; ++i)
    REQUIRE(c->put("grow/a", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());
  CHECK(c->lookup("grow/a", chain, source(LookupSource::kIndex)).value() == 300);
  auto j = nlohmann::json::parse(c->stats_json().value());
  INFO(j.dump());
  CHECK(j["arenas"][0]["lookup_index_generation"].get<uint64_t>() >= 3);  // 64 -> 128 -> 256 -> 512
  CHECK(j["arenas"][0]["lookup_index_slots"].get<uint64_t>() == 512);
  CHECK(j["arenas"][0]["lookup_index_entries"].get<uint64_t>() == 300);
  CHECK(c->lookup("grow/a", chain, source(LookupSource::kDaemon)).value() == 300);
}

TEST_CASE("lookup index: turned off in the daemon, lookups ask it") {
  DaemonOptions opt;
  opt.lookup_index = false;
  Daemon d(opt);
  auto c = connect(d.socket());
  const BlockKey k = nth(4, 0);
  REQUIRE(c->put("off/a", k, KvBlock(k, kTokens).tensors).is_ok());
  CHECK(!c->uses_lookup_index("off/a"));
  CHECK(c->lookup("off/a", std::span(&k, 1)).value() == 1);
  CHECK(c->lookup("off/a", std::span(&k, 1), source(LookupSource::kIndex)).status().code() ==
        Errc::kUnavailable);
}

TEST_CASE("lookup index: a daemon restart retires the old index; new clients map the new one") {
  DaemonOptions opt;
  opt.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"durable/\"\ncodec = \"fp16\"\ndisk = \"persist\"\n";
  Daemon d(opt);
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 8; ++i) chain.push_back(nth(5, i));
  {
    auto c = connect(d.socket());
    for (uint64_t i = 0; i < 6; ++i)
      REQUIRE(c->put("durable/a", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());
    REQUIRE(c->put("volatile/a", chain[0], KvBlock(chain[0], kTokens).tensors).is_ok());
    CHECK(c->lookup("durable/a", chain).value() == 6);
    CHECK(c->uses_lookup_index("durable/a"));
    d.stop();
    // The old mapping is retired: the lookup does not answer from it.
    CHECK(!c->lookup("durable/a", chain).is_ok());
    d.restart();
  }
  auto c = connect(d.socket());
  // The disk tier's recovered blocks are listed in the new index at start.
  CHECK(c->lookup("durable/a", chain, source(LookupSource::kIndex)).value() == 6);
  CHECK(c->lookup("durable/a", chain, source(LookupSource::kDaemon)).value() == 6);
  CHECK(c->lookup("volatile/a", std::span(&chain[0], 1)).value() == 0);
  auto lease = c->get("durable/a", chain).value();
  CHECK(lease.found() == 6);
}

TEST_CASE("lookup index: a daemon killed by SIGKILL is not answered for by its index") {
  Daemon d;
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 8; ++i) chain.push_back(nth(6, i));
  auto c = connect(d.socket());
  for (uint64_t i = 0; i < 5; ++i)
    REQUIRE(c->put("idx/k", chain[i], KvBlock(chain[i], kTokens).tensors).is_ok());
  CHECK(c->lookup("idx/k", chain, source(LookupSource::kIndex)).value() == 5);
  // No chance to retire the index: the liveness page mapped with it tells the client.
  d.kill9();
  auto r = c->lookup("idx/k", chain, source(LookupSource::kIndex));
  CHECK(!r.is_ok());
  CHECK(!c->lookup("idx/k", chain).is_ok());  // the default asks the daemon, which is gone
}

// ---- churn: reader processes against a daemon that puts, evicts and removes ----

namespace {

constexpr uint64_t kChurnKeys = 6000;   // keys of churn/a (the host tier holds ~2000)
constexpr uint64_t kForeignKeys = 200;  // keys put in churn/b only

}  // namespace

TEST_CASE("lookup index churn reader", "[.][lookup_index_churn_reader]") {
  if (!kvtier::testing::in_child("lookup_index_churn_reader")) return;
  auto c = Client::connect(kvtier::testing::child_env("KVTIER_TEST_SOCKET"));
  if (!c) ::_exit(2);
  const auto until =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(std::atoi(kvtier::testing::child_env("KVTIER_TEST_MS").c_str()));
  std::mt19937_64 rng(::getpid());
  uint64_t positives = 0, found = 0, gone = 0;
  int bad = 0;
  while (std::chrono::steady_clock::now() < until && bad == 0) {
    // Keys of churn/b never show in churn/a.
    std::vector<BlockKey> foreign;
    for (int i = 0; i < 32; ++i) foreign.push_back(nth(7, rng() % kForeignKeys));
    auto f = (*c)->lookup("churn/a", foreign, source(LookupSource::kIndex));
    if (!f || *f != 0) bad = 3;
    // A positive lookup is followed by a get that finds the block (whole and right) or
    // reports it gone.
    std::vector<BlockKey> chain;
    const uint64_t start = rng() % kChurnKeys;
    for (uint64_t i = 0; i < 8; ++i) chain.push_back(nth(6, (start + i) % kChurnKeys));
    auto n = (*c)->lookup("churn/a", chain, source(LookupSource::kIndex));
    if (!n) {
      bad = 4;
      break;
    }
    if (*n == 0) continue;
    ++positives;
    auto lease = (*c)->get("churn/a", std::span(chain).first(*n));
    if (!lease) {
      bad = 5;
      break;
    }
    for (const LeasedBlock& b : lease->blocks()) {
      if (!b.found()) {
        ++gone;
        continue;
      }
      ++found;
      if (!kvtier::testing::check_kv_block(b, kTokens)) bad = 6;
    }
  }
  std::fprintf(stderr, "reader %d: %llu positive lookups, %llu found, %llu gone\n", ::getpid(),
               (unsigned long long)positives, (unsigned long long)found, (unsigned long long)gone);
  if (bad == 0 && positives == 0) bad = 7;
  ::_exit(bad);
}

TEST_CASE(
    "lookup index: reader processes under put/evict/remove churn see no foreign or torn entry") {
  DaemonOptions opt;
  opt.host_bytes = 16ull << 20;  // ~2000 blocks of 8 KiB: eviction runs all the time
  opt.staging_bytes = 2ull << 20;
  opt.disk = false;
  opt.lookup_index_slots = 256;  // resizes during the run too
  Daemon d(opt);
  auto c = connect(d.socket());
  for (uint64_t i = 0; i < kForeignKeys; ++i) {
    const BlockKey k = nth(7, i);
    REQUIRE(c->put("churn/b", k, KvBlock(k, kTokens).tensors).is_ok());
  }
  const int kReaders = 3;
  const int ms = 3000;
  std::vector<pid_t> pids;
  for (int r = 0; r < kReaders; ++r)
    pids.push_back(kvtier::testing::spawn_self(
                       "lookup_index_churn_reader",
                       {{"KVTIER_TEST_SOCKET", d.socket()}, {"KVTIER_TEST_MS", std::to_string(ms)}})
                       .value());
  std::mt19937_64 rng(42);
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  uint64_t puts = 0, removes = 0, evicts = 0;
  while (std::chrono::steady_clock::now() < until) {
    const uint64_t i = rng() % kChurnKeys;
    const BlockKey k = nth(6, i);
    const int op = static_cast<int>(rng() % 10);
    if (op < 7) {
      Status st = c->put("churn/a", k, KvBlock(k, kTokens).tensors);
      REQUIRE((st.is_ok() || st.code() == Errc::kAlreadyExists));
      ++puts;
    } else if (op < 9) {
      REQUIRE(c->remove("churn/a", std::span(&k, 1)).is_ok());
      ++removes;
    } else {
      REQUIRE(c->evict("churn/a", std::span(&k, 1), false, TierSel::kAll).is_ok());
      ++evicts;
    }
  }
  INFO("puts " << puts << " removes " << removes << " evicts " << evicts);
  for (pid_t p : pids) CHECK(kvtier::testing::wait_child(p) == 0);
  // The churn did evict (the host tier filled), not only put and remove.
  auto j = nlohmann::json::parse(c->stats_json().value());
  CHECK(j["tiers"]["host"]["evictions"].get<uint64_t>() > 0);
  // The index agrees with the daemon once the churn stopped.
  std::vector<BlockKey> all;
  for (uint64_t i = 0; i < kChurnKeys; ++i) all.push_back(nth(6, i));
  for (uint64_t i = 0; i < kChurnKeys; i += 64) {
    auto part = std::span(all).subspan(i, std::min<uint64_t>(64, kChurnKeys - i));
    for (const BlockKey& k : part)
      CHECK(c->lookup("churn/a", std::span(&k, 1), source(LookupSource::kIndex)).value() ==
            c->lookup("churn/a", std::span(&k, 1), source(LookupSource::kDaemon)).value());
  }
}
