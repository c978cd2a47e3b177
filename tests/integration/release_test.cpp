// Releases without a round trip (docs/protocol.md, "Releases without a round trip"): deferred
// releases ride on the next request, posted ones go one-way; either way the daemon keeps a
// released block's memory until it has the release, and a dead client releases everything.
#include <catch2/catch.hpp>

#include <chrono>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>
#include <vector>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

constexpr uint64_t kTokens = 16;

std::unique_ptr<Client> connect(const Daemon& d, ReleaseMode mode = ReleaseMode::kDeferred,
                                uint32_t busy_poll_us = 0) {
  ClientOptions o;
  o.socket = d.socket();
  o.release_mode = mode;
  o.busy_poll_us = busy_poll_us;
  o.timeout_ms = 10000;
  auto c = Client::connect(o);
  REQUIRE(c.is_ok());
  return std::move(c).value();
}

nlohmann::json stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value());
}

std::vector<BlockKey> keys_for(std::string_view ns, size_t n) {
  std::vector<uint32_t> tokens(n * kTokens);
  std::iota(tokens.begin(), tokens.end(), 7u);
  return chain_keys(ns, tokens, kTokens);
}

void put_all(Client& c, std::string_view ns, const std::vector<BlockKey>& keys) {
  for (const auto& k : keys) REQUIRE(c.put(ns, k, KvBlock(k, kTokens).tensors).is_ok());
}

// The daemon's lease count as another client sees it, waiting up to 5 s for `want` (one-way
// releases are handled when the daemon reads them).
uint64_t leases_reach(Client& observer, uint64_t want) {
  uint64_t n = 0;
  for (int i = 0; i < 500; ++i) {
    n = stats(observer)["leases"].get<uint64_t>();
    if (n == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return n;
}

}  // namespace

TEST_CASE("deferred releases ride on the client's next request") {
  Daemon d;
  auto c = connect(d);
  auto observer = connect(d);
  const std::string ns = "rel/a";
  auto keys = keys_for(ns, 4);
  put_all(*c, ns, keys);

  auto lease = c->get(ns, keys);
  REQUIRE(lease.is_ok());
  for (const auto& b : lease->blocks()) CHECK(testing::check_kv_block(b, kTokens));
  REQUIRE(lease->release().is_ok());
  // Nothing was sent: the daemon still holds the leases, so another client's remove of the
  // blocks is deferred and their bytes stay intact.
  CHECK(stats(*observer)["leases"] == 4);
  auto removed = observer->remove(ns, keys).value();
  CHECK(removed.deferred == 4);
  const uint64_t carried = stats(*observer)["counters"]["carried_releases"].get<uint64_t>();

  // The next request of the releasing client, whatever it is, carries them first.
  CHECK(c->lookup(ns, keys, LookupOptions{false, LookupSource::kDaemon}).value() == 0);
  CHECK(stats(*observer)["leases"] == 0);
  CHECK(stats(*observer)["counters"]["carried_releases"].get<uint64_t>() == carried + 4);
}

TEST_CASE("deferred releases go one-way when many wait, and at flush_releases()") {
  Daemon d;
  auto c = connect(d);
  auto observer = connect(d);
  const std::string ns = "rel/b";
  auto keys = keys_for(ns, kMaxPendingReleases + 8);
  put_all(*c, ns, keys);

  std::vector<Lease> leases;
  for (const auto& k : keys) leases.push_back(c->get(ns, {&k, 1}).value());
  CHECK(stats(*observer)["leases"] == keys.size());
  const uint64_t oneway = stats(*observer)["counters"]["oneway_requests"].get<uint64_t>();
  // kMaxPendingReleases releases: the last one sends them all, with no reply awaited.
  for (size_t i = 0; i < kMaxPendingReleases; ++i) REQUIRE(leases[i].release().is_ok());
  CHECK(leases_reach(*observer, 8) == 8);
  CHECK(stats(*observer)["counters"]["oneway_requests"].get<uint64_t>() == oneway + 1);

  // Fewer than that wait until flushed.
  for (size_t i = kMaxPendingReleases; i < leases.size(); ++i) REQUIRE(leases[i].release().is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(stats(*observer)["leases"] == 8);
  REQUIRE(c->flush_releases().is_ok());
  CHECK(leases_reach(*observer, 0) == 0);
  REQUIRE(c->flush_releases().is_ok());  // nothing waits: nothing sent
  CHECK(stats(*observer)["counters"]["oneway_requests"].get<uint64_t>() == oneway + 2);
}

TEST_CASE("posted and round-trip release modes") {
  Daemon d;
  auto observer = connect(d);
  const std::string ns = "rel/c";
  auto keys = keys_for(ns, 3);
  put_all(*observer, ns, keys);
  for (ReleaseMode mode : {ReleaseMode::kPosted, ReleaseMode::kRoundTrip}) {
    auto c = connect(d, mode);
    auto lease = c->get(ns, keys).value();
    CHECK(lease.found() == 3);
    CHECK(stats(*observer)["leases"] == 3);
    REQUIRE(lease.release().is_ok());
    if (mode == ReleaseMode::kRoundTrip)
      CHECK(stats(*observer)["leases"] == 0);  // the reply came after the daemon released
    else
      CHECK(leases_reach(*observer, 0) == 0);
  }
}

TEST_CASE("a client that dies with deferred releases pending releases everything") {
  Daemon d;
  auto observer = connect(d);
  const std::string ns = "rel/d";
  auto keys = keys_for(ns, 5);
  put_all(*observer, ns, keys);
  {
    auto c = connect(d);
    auto lease = c->get(ns, keys).value();
    REQUIRE(lease.release().is_ok());
    CHECK(stats(*observer)["leases"] == 5);
  }  // the connection closes
  CHECK(leases_reach(*observer, 0) == 0);
  // And the blocks are all still there, intact.
  auto lease = observer->get(ns, keys).value();
  CHECK(lease.found() == 5);
  for (const auto& b : lease.blocks()) CHECK(testing::check_kv_block(b, kTokens));
}

TEST_CASE("deferred releases ride on requests through the request channel") {
  DaemonOptions o;
  o.busy_poll_us = 1000;
  Daemon d(o);
  auto c = connect(d, ReleaseMode::kDeferred, 200);
  REQUIRE(c->uses_request_channel());
  auto observer = connect(d);
  const std::string ns = "rel/e";
  auto keys = keys_for(ns, 6);
  put_all(*c, ns, keys);
  for (int round = 0; round < 20; ++round) {
    auto lease = c->get(ns, keys).value();
    REQUIRE(lease.found() == 6);
    for (const auto& b : lease.blocks()) CHECK(testing::check_kv_block(b, kTokens));
    REQUIRE(lease.release().is_ok());
  }
  // Each get carried the previous round's releases: only the last round's are held.
  CHECK(stats(*observer)["leases"] == 6);
  CHECK(c->lookup(ns, keys, LookupOptions{false, LookupSource::kDaemon}).value() == 6);
  CHECK(stats(*observer)["leases"] == 0);
}
