// The shared-memory request channel (common/channel.h) end to end through a real kvtierd:
// what goes through it, what still takes the socket, wake-ups, and hostile channel clients.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "common/channel.h"
#include "common/frame.h"
#include "common/wire.h"
#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

std::vector<BlockKey> keys_for(std::string_view ns, size_t n, uint32_t salt = 0) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), salt);
  return chain_keys(ns, tokens, 16);
}

uint64_t counter(Client& c, const char* name) {
  return nlohmann::json::parse(c.stats_json().value())["counters"][name].get<uint64_t>();
}

std::unique_ptr<Client> polling_client(const Daemon& d, uint32_t poll_us = 200) {
  ClientOptions o;
  o.socket = d.socket();
  o.busy_poll_us = poll_us;
  o.timeout_ms = 10000;  // a lost wake-up fails the test instead of hanging it
  auto c = Client::connect(o);
  REQUIRE(c.is_ok());
  return std::move(c).value();
}

DaemonOptions polling_daemon(uint32_t poll_us) {
  DaemonOptions o;
  o.busy_poll_us = poll_us;
  o.host_bytes = 128ull << 20;
  return o;
}

}  // namespace

TEST_CASE(
    "a polling client's requests go through the channel; fds and big frames take the socket") {
  Daemon d(polling_daemon(1000));
  auto c = polling_client(d);
  REQUIRE(c->uses_request_channel());
  const uint64_t before = counter(*c, "channel_requests");
  CHECK(counter(*c, "channels_opened") == 1);
  {
    // `kvtierctl clients` shows which connections use a channel.
    auto plain = Client::connect(d.socket()).value();
    auto clients = nlohmann::json::parse(plain->clients_json().value());
    REQUIRE(clients.size() == 2);
    std::map<uint64_t, std::string> transport;
    for (const auto& x : clients) transport[x["session"].get<uint64_t>()] = x["transport"];
    CHECK(transport[c->session_id()] == "channel");
    CHECK(transport[plain->session_id()] == "socket");
  }

  // put_begin's reply carries the staging memfd: it comes on the socket, the seal through
  // the channel.  get maps the arena (a descriptor again), then leases through the channel.
  const std::string ns = "chan";
  auto keys = keys_for(ns, 40);
  for (size_t i = 0; i < keys.size(); ++i) {
    KvBlock b(keys[i], 4 + i % 5);
    REQUIRE(c->put(ns, keys[i], b.tensors).is_ok());
  }
  CHECK(c->lookup(ns, keys).value() == keys.size());
  {
    auto lease = c->get(ns, keys).value();
    REQUIRE(lease.found() == keys.size());
    for (size_t i = 0; i < keys.size(); ++i)
      CHECK(kvtier::testing::check_kv_block(lease.blocks()[i], 4 + i % 5));
  }
  const uint64_t small = counter(*c, "channel_requests") - before;
  CHECK(small >= 2 * keys.size());  // seals, lookups, gets, releases, stats

  SECTION("a request answered with progress frames: the reply moves to the socket") {
    std::vector<uint64_t> done;
    auto report = c->verify([&](uint64_t d, uint64_t) { done.push_back(d); });
    REQUIRE(report.is_ok());
    CHECK(nlohmann::json::parse(*report).is_object());
    CHECK_FALSE(done.empty());  // at least the first progress frame came (on the socket)
    CHECK(c->lookup(ns, keys).value() == keys.size());  // and the channel carries on
  }
  SECTION("a request bigger than the channel's area goes on the socket") {
    auto many = keys_for(ns, 6000);  // 96 KB of keys > the 64 KiB request area
    std::copy(keys.begin(), keys.end(), many.begin());
    const uint64_t n0 = counter(*c, "channel_requests");
    CHECK(c->lookup(ns, many).value() == keys.size());
    // Only the two stats requests came through the channel.
    CHECK(counter(*c, "channel_requests") - n0 == 1);
    // And the channel works right after.
    CHECK(c->lookup(ns, keys).value() == keys.size());
  }
  SECTION("a reply bigger than the channel's area comes on the socket") {
    auto more = keys_for(ns, 3000, 777);
    for (const auto& k : more) {
      KvBlock b(k, 1);
      REQUIRE(c->put(ns, k, b.tensors).is_ok());
    }
    const uint64_t n0 = counter(*c, "channel_requests");
    auto lease = c->get(ns, more).value();  // ~0.6 MB of leases: more than the 256 KiB area
    REQUIRE(lease.found() == more.size());
    CHECK(kvtier::testing::check_kv_block(lease.blocks()[2999], 1));
    CHECK(counter(*c, "channel_requests") - n0 == 2);  // the get and this stats request
  }
}

TEST_CASE("no wake-up is lost when the client and the daemon sleep between requests") {
  // Short windows: most gaps between requests outlast the daemon's poll, some the client's,
  // some neither, so every path of the sleep/doorbell handshake runs many times.
  DaemonOptions o = polling_daemon(40);
  o.io_threads = 1;
  Daemon d(o);
  const std::string ns = "wake";
  auto keys = keys_for(ns, 8);
  {
    auto c = polling_client(d, 10);
    for (const auto& k : keys) {
      KvBlock b(k, 2);
      REQUIRE(c->put(ns, k, b.tensors).is_ok());
    }
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      ClientOptions co;
      co.socket = d.socket();
      co.busy_poll_us = 10 + 15 * t;
      co.timeout_ms = 10000;
      auto c = Client::connect(co);
      if (!c || !(*c)->uses_request_channel()) return void(bad += 1000);
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        auto n = (*c)->lookup(ns, keys);
        if (!n || *n != keys.size()) ++bad;
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 120));
      }
    });
  for (auto& t : threads) t.join();
  CHECK(bad == 0);
}

TEST_CASE("no channel unless both sides poll and the daemon allows it") {
  SECTION("a daemon that does not poll refuses; the client stays on the socket") {
    Daemon d;  // busy_poll_us = 0
    auto c = polling_client(d);
    CHECK_FALSE(c->uses_request_channel());
    CHECK(c->lookup("x", keys_for("x", 3)).value() == 0);
    CHECK(counter(*c, "channel_requests") == 0);
  }
  SECTION("daemon.request_channel = false") {
    DaemonOptions o = polling_daemon(500);
    o.request_channel = false;
    Daemon d(o);
    auto c = polling_client(d);
    CHECK_FALSE(c->uses_request_channel());
    CHECK(c->lookup("x", keys_for("x", 3)).value() == 0);
  }
  SECTION("a client that does not poll, or asks for no channel") {
    Daemon d(polling_daemon(500));
    auto plain = Client::connect(d.socket()).value();
    CHECK_FALSE(plain->uses_request_channel());
    ClientOptions o;
    o.socket = d.socket();
    o.busy_poll_us = 100;
    o.request_channel = false;
    auto off = Client::connect(o).value();
    CHECK_FALSE(off->uses_request_channel());
    CHECK(off->lookup("x", keys_for("x", 3)).value() == 0);
    CHECK(counter(*off, "channels_opened") == 0);
  }
}
