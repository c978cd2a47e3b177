// The cluster client against real Redis Clusters (tests/testing/redis_cluster.h): slot
// routing, pipelining, redirects during resharding, timeouts, failover, seeds and AUTH.
#include "tiers/remote/redis_cluster.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "tests/testing/redis_cluster.h"

namespace kvtier::redis {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::RedisCluster;
using testing::RedisValue;

// The 3-master cluster the cases that leave it serving share (started once, ~2 s).
RedisCluster& shared_cluster() {
  static RedisCluster cluster;
  return cluster;
}

std::unique_ptr<Cluster> connect(const RedisCluster& rc, ClusterConfig config = {}) {
  if (config.seeds.empty()) config.seeds = rc.seeds();
  Result<std::unique_ptr<Cluster>> c = Cluster::connect(config);
  REQUIRE(c.is_ok());
  return std::move(c).value();
}

Command cmd(std::initializer_list<std::string_view> argv) {
  return Command{argv, 1};
}

// The one result of a one-command batch.
Result<Reply> one(Cluster& c, std::initializer_list<std::string_view> argv) {
  const Command command = cmd(argv);
  return std::move(c.execute({&command, 1})[0]);
}

// A loopback port nothing listens on (bound and closed: connections to it are refused).
std::string dead_address() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
}

// A key (with a {tag}) whose slot `pred` accepts.
template <typename Pred>
std::string tag_where(const std::string& prefix, Pred pred) {
  for (int i = 0;; ++i) {
    const std::string tag = "{" + prefix + std::to_string(i) + "}";
    if (pred(Cluster::slot_of(tag))) return tag;
  }
}

TEST_CASE("slot_of agrees with CLUSTER KEYSLOT", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  const std::string node = rc.seeds()[0];
  std::mt19937 rng(7);
  const std::string alphabet = std::string("ab{}\0\r\n", 7) + "xyz";
  for (int i = 0; i < 400; ++i) {
    std::string key(rng() % 24, '\0');
    for (char& ch : key)
      ch = i % 2 == 0 ? static_cast<char>(rng()) : alphabet[rng() % alphabet.size()];
    const RedisValue v = rc.run(node, {"CLUSTER", "KEYSLOT", key});
    REQUIRE(v.type == RedisValue::Type::kInteger);
    CHECK(Cluster::slot_of(key) == v.integer);
  }
  for (const std::string key : {"{user1000}.following", "{user1000}.followers", "foo{}{bar}",
                                "foo{{bar}}zap", "foo{bar}{zap}", "", "{", "}{", "{}"}) {
    CHECK(Cluster::slot_of(key) == rc.run(node, {"CLUSTER", "KEYSLOT", key}).integer);
  }
  // The specification's cases, without the server.
  CHECK(Cluster::slot_of("{user1000}.following") == Cluster::slot_of("user1000"));
  // "foo{}{bar}": the first tag is empty, so the whole key is hashed (not "bar").
  CHECK(Cluster::slot_of("foo{}{bar}") != Cluster::slot_of("bar"));
  CHECK(Cluster::slot_of("foo{{bar}}zap") == Cluster::slot_of("{bar"));
  CHECK(Cluster::slot_of("foo{bar}{zap}") == Cluster::slot_of("bar"));
  CHECK(Cluster::slot_of("123456789") == (0x31C3 & 16383));
}

TEST_CASE("SET and GET over every master, one round trip per node and batch", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  auto c = connect(rc);
  std::vector<std::string> keys, values;
  for (int i = 0; i < 300; ++i) {
    keys.push_back("rt:key:" + std::to_string(i));
    values.push_back("value-" + std::to_string(i * 7919));
  }
  std::set<std::string> masters;
  std::map<uint16_t, std::string> owner;  // slot -> master, from the server
  for (const std::string& k : keys) {
    const uint16_t s = Cluster::slot_of(k);
    if (!owner.contains(s)) owner[s] = rc.master_of_slot(s);
    masters.insert(owner[s]);
  }
  REQUIRE(masters.size() == 3);

  std::vector<Command> sets;
  for (size_t i = 0; i < keys.size(); ++i) sets.push_back(cmd({"SET", keys[i], values[i]}));
  const ClusterCounters before_set = c->counters();
  for (const Result<Reply>& r : c->execute(sets)) {
    REQUIRE(r.is_ok());
    CHECK(r->kind() == Reply::Kind::kStatus);
    CHECK(r->str() == "OK");
  }
  CHECK(c->counters().round_trips - before_set.round_trips == 3);
  CHECK(c->counters().commands - before_set.commands == 300);

  for (size_t from = 0; from + 32 <= keys.size(); from += 32) {
    std::vector<Command> gets;
    std::set<std::string> involved;
    for (size_t i = from; i < from + 32; ++i) {
      gets.push_back(cmd({"GET", keys[i]}));
      involved.insert(owner[Cluster::slot_of(keys[i])]);
    }
    const ClusterCounters before = c->counters();
    const std::vector<Result<Reply>> got = c->execute(gets);
    CHECK(c->counters().round_trips - before.round_trips == involved.size());
    REQUIRE(got.size() == 32);
    for (size_t i = 0; i < 32; ++i) {
      REQUIRE(got[i].is_ok());
      CHECK(got[i]->str() == values[from + i]);
    }
  }
  CHECK(c->counters().moved == 0);
  CHECK(one(*c, {"GET", "rt:no-such-key"})->is_nil());
  // An error reply is a reply, not a failure.
  const Result<Reply> wrong = one(*c, {"INCR", keys[0]});
  REQUIRE(wrong.is_ok());
  CHECK(wrong->kind() == Reply::Kind::kError);

  uint32_t slots = 0;
  for (const NodeState& n : c->nodes()) slots += n.slots;
  CHECK(slots == 16384);
}

TEST_CASE("2 MiB binary values round-trip byte-exact", "[redis_cluster]") {
  auto c = connect(shared_cluster());
  std::mt19937_64 rng(11);
  std::vector<std::string> values(3, std::string(2u << 20, '\0'));
  for (std::string& v : values)
    for (char& ch : v) ch = static_cast<char>(rng());
  values[1][0] = '\0';
  values[1].replace(100, 4, "\r\n\r\n");
  const std::string keys[] = {"big:a", "big:b", "big:c"};
  std::vector<Command> sets, gets;
  for (int i = 0; i < 3; ++i) {
    sets.push_back(cmd({"SET", keys[i], values[i]}));
    gets.push_back(cmd({"GET", keys[i]}));
  }
  for (const Result<Reply>& r : c->execute(sets)) REQUIRE(r.is_ok());
  const std::vector<Result<Reply>> got = c->execute(gets);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(got[i].is_ok());
    REQUIRE(got[i]->str().size() == values[i].size());
    CHECK(got[i]->str() == values[i]);
  }
}

TEST_CASE("A slot migrated behind the client's back: MOVED, map refreshed", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  auto c = connect(rc);
  const std::string tag = "{moved}";
  const uint16_t slot = Cluster::slot_of(tag);
  std::vector<std::string> keys, values;  // the commands' views point into these
  for (int i = 0; i < 10; ++i) {
    keys.push_back(tag + std::to_string(i));
    values.push_back("v" + keys.back());
  }
  std::vector<Command> sets, gets;
  for (size_t i = 0; i < keys.size(); ++i) {
    sets.push_back(cmd({"SET", keys[i], values[i]}));
    gets.push_back(cmd({"GET", keys[i]}));
  }
  for (const Result<Reply>& r : c->execute(sets)) REQUIRE(r.is_ok());

  const std::string from = rc.master_of_slot(slot);
  std::string to;
  for (const std::string& m : rc.masters())
    if (m != from) to = m;
  rc.migrate_slot(slot, from, to);
  REQUIRE(rc.master_of_slot(slot) == to);

  const ClusterCounters before = c->counters();
  const std::vector<Result<Reply>> got = c->execute(gets);
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(got[i].is_ok());
    CHECK(got[i]->str() == "v" + keys[i]);
  }
  const ClusterCounters after = c->counters();
  CHECK(after.moved - before.moved == keys.size());
  CHECK(after.slot_map_refreshes > before.slot_map_refreshes);
  // The map knows now: no more redirects, one round trip.
  const std::vector<Result<Reply>> again = c->execute(gets);
  for (const Result<Reply>& r : again) REQUIRE(r.is_ok());
  CHECK(c->counters().moved == after.moved);
  CHECK(c->counters().round_trips - after.round_trips == 1);
}

TEST_CASE("A slot half-migrated: moved keys are answered through ASK", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  auto c = connect(rc);
  const std::string tag = "{ask}";
  const uint16_t slot = Cluster::slot_of(tag);
  std::vector<std::string> keys, values;  // the commands' views point into these
  for (int i = 0; i < 10; ++i) {
    keys.push_back(tag + std::to_string(i));
    values.push_back("v" + keys.back());
  }
  std::vector<Command> sets, gets;
  for (size_t i = 0; i < keys.size(); ++i) {
    sets.push_back(cmd({"SET", keys[i], values[i]}));
    gets.push_back(cmd({"GET", keys[i]}));
  }
  for (const Result<Reply>& r : c->execute(sets)) REQUIRE(r.is_ok());

  const std::string from = rc.master_of_slot(slot);
  std::string to;
  for (const std::string& m : rc.masters())
    if (m != from) to = m;
  rc.begin_migration(slot, from, to);
  rc.move_keys(from, to, {keys.begin(), keys.begin() + 4});

  ClusterCounters before = c->counters();
  const std::vector<Result<Reply>> got = c->execute(gets);
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(got[i].is_ok());
    CHECK(got[i]->str() == "v" + keys[i]);
  }
  CHECK(c->counters().ask - before.ask == 4);  // the 4 moved; the 6 others from the source
  CHECK(c->counters().moved == before.moved);
  // A new key of a migrating slot is created at the destination (ASK, then ASKING + SET).
  before = c->counters();
  const Result<Reply> created = one(*c, {"SET", tag + "new", "fresh"});
  REQUIRE(created.is_ok());
  CHECK(created->str() == "OK");
  CHECK(c->counters().ask - before.ask == 1);
  // The destination holds the 4 moved keys and the new one (EXISTS there would be MOVED).
  CHECK(rc.run(to, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}).integer == 5);
  CHECK(rc.run(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}).integer == 6);

  rc.finish_migration(slot, from, to);
  const std::vector<Result<Reply>> after = c->execute(gets);
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(after[i].is_ok());
    CHECK(after[i]->str() == "v" + keys[i]);
  }
  CHECK(c->counters().moved > before.moved);
}

TEST_CASE("A node that answers nothing times out within command_timeout", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  ClusterConfig config;
  config.command_timeout = 300ms;
  auto c = connect(rc, config);
  const std::string slow_tag = "{pause}";
  const std::string paused = rc.master_of_slot(Cluster::slot_of(slow_tag));
  const std::string other =
      tag_where("other", [&](uint16_t s) { return rc.master_of_slot(s) != paused; });
  const std::string fast_key = other + "k", slow_key = slow_tag + "k";
  const std::vector<Command> batch = {cmd({"SET", fast_key, "fine"}),
                                      cmd({"SET", slow_key, "late"})};
  REQUIRE(c->execute(batch)[1].is_ok());  // pools a connection to each

  // Well under cluster-node-timeout (1000 ms): the cluster never marks it failing.
  rc.pause_node(paused);
  const Clock::time_point start = Clock::now();
  const std::vector<Result<Reply>> got = c->execute(batch);
  const auto took = Clock::now() - start;
  rc.resume_node(paused);

  REQUIRE(got[0].is_ok());
  CHECK(got[0]->str() == "OK");
  REQUIRE(!got[1].is_ok());
  CHECK(got[1].status().code() == Errc::kUnavailable);
  CHECK(took >= 250ms);
  CHECK(took < 900ms);
  CHECK(c->counters().timeouts >= 1);
  // The timed-out connection was dropped; a new one works.
  const Result<Reply> later = one(*c, {"GET", slow_key});
  REQUIRE(later.is_ok());
  CHECK(later->str() == "late");
}

TEST_CASE("Concurrent callers share one client", "[redis_cluster]") {
  auto c = connect(shared_cluster());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 100; ++round) {
        std::vector<std::string> keys, values;
        std::vector<Command> batch;
        for (int i = 0; i < 8; ++i) {
          keys.push_back("mt:" + std::to_string(t) + ":" + std::to_string(i));
          values.push_back(std::to_string(round * 100 + i));
        }
        for (int i = 0; i < 8; ++i) batch.push_back(cmd({"SET", keys[i], values[i]}));
        for (int i = 0; i < 8; ++i) batch.push_back(cmd({"GET", keys[i]}));
        const std::vector<Result<Reply>> got = c->execute(batch);
        for (int i = 0; i < 8; ++i)
          if (!got[8 + i].is_ok() || got[8 + i]->str() != values[i]) wrong++;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(wrong == 0);
  CHECK(c->counters().commands == 4 * 100 * 16);
}

TEST_CASE("Dead seeds are skipped; all dead fails fast", "[redis_cluster]") {
  RedisCluster& rc = shared_cluster();
  const std::string dead = dead_address();
  ClusterConfig config;
  config.seeds = {dead, rc.seeds()[1]};
  auto c = connect(rc, config);
  const Result<Reply> r = one(*c, {"SET", "seed:k", "v"});
  REQUIRE(r.is_ok());
  CHECK(r->str() == "OK");
  bool saw_dead = false;
  for (const NodeState& n : c->nodes()) {
    if (n.address != dead) continue;
    saw_dead = true;
    CHECK(!n.reachable);
    CHECK(n.errors == 1);
    CHECK(n.slots == 0);
  }
  CHECK(saw_dead);
  CHECK(c->counters().connection_errors == 1);

  ClusterConfig none;
  none.seeds = {dead_address(), dead_address()};
  const Clock::time_point start = Clock::now();
  const Result<std::unique_ptr<Cluster>> failed = Cluster::connect(none);
  CHECK(Clock::now() - start < 500ms);
  REQUIRE(!failed.is_ok());
  CHECK(failed.status().code() == Errc::kUnavailable);

  ClusterConfig malformed;
  malformed.seeds = {"no-port"};
  CHECK(Cluster::connect(malformed).status().code() == Errc::kInvalidArgument);
}

TEST_CASE("AUTH with the configured password", "[redis_cluster]") {
  RedisCluster rc({.masters = 3, .replicas = 0, .password = "s3cret pass"});
  ClusterConfig config;
  config.password = "s3cret pass";
  auto c = connect(rc, config);
  const std::vector<Command> batch = {cmd({"SET", "auth:a", "1"}), cmd({"SET", "auth:b", "2"}),
                                      cmd({"GET", "auth:a"})};
  const std::vector<Result<Reply>> got = c->execute(batch);
  for (const Result<Reply>& r : got) REQUIRE(r.is_ok());
  CHECK(got[2]->str() == "1");

  ClusterConfig wrong;
  wrong.seeds = rc.seeds();
  wrong.password = "guess";
  CHECK(Cluster::connect(wrong).status().code() == Errc::kPermissionDenied);
  ClusterConfig missing;
  missing.seeds = rc.seeds();
  const Result<std::unique_ptr<Cluster>> none = Cluster::connect(missing);
  CHECK(none.status().code() == Errc::kPermissionDenied);  // CLUSTER SLOTS answers NOAUTH
}

// A master is SIGKILLed while a thread writes and reads through one client: its slots are
// unavailable (promptly, never a wrong value) until its replica takes over, the others never
// stop, and the same client finds the new master by itself.
TEST_CASE("Failover: a master killed, its replica promoted", "[redis_cluster][failover]") {
  RedisCluster rc({.masters = 3, .replicas = 1, .password = {}});
  ClusterConfig config;
  config.connect_timeout = 200ms;
  config.command_timeout = 500ms;
  auto c = connect(rc, config);

  const std::string victim_tag = "{victim}";
  const std::string victim = rc.master_of_slot(Cluster::slot_of(victim_tag));
  const std::string other_tag =
      tag_where("survivor", [&](uint16_t s) { return rc.master_of_slot(s) != victim; });

  std::atomic<bool> stop{false}, killed{false}, failed_over{false};
  std::atomic<int> victim_unavailable{0}, victim_ok_after{0}, other_failed{0}, wrong{0};
  std::atomic<int64_t> slowest_ms{0};
  std::thread loop([&] {
    for (int seq = 0; !stop; ++seq) {
      for (const std::string& tag : {victim_tag, other_tag}) {
        const std::string key = tag + "k", value = "v" + std::to_string(seq);
        const std::vector<Command> batch = {cmd({"SET", key, value}), cmd({"GET", key})};
        const Clock::time_point start = Clock::now();
        const std::vector<Result<Reply>> got = c->execute(batch);
        const int64_t ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
        if (ms > slowest_ms) slowest_ms = ms;
        for (const Result<Reply>& r : got) {
          if (!r.is_ok() && r.status().code() != Errc::kUnavailable) wrong++;
          if (r.is_ok() && r->kind() == Reply::Kind::kError) wrong++;
        }
        if (got[0].is_ok() && got[1].is_ok() && got[1]->str() != value) wrong++;
        const bool ok = got[0].is_ok() && got[1].is_ok();
        if (tag == other_tag && !ok) other_failed++;
        if (tag == victim_tag && !ok) victim_unavailable++;
        if (tag == victim_tag && ok && failed_over) victim_ok_after++;
        if (tag == victim_tag && !ok && !killed) wrong++;  // before the kill: no excuse
      }
      std::this_thread::sleep_for(5ms);
    }
  });

  std::this_thread::sleep_for(300ms);
  killed = true;
  rc.kill_node(victim);
  rc.wait_failover(victim);
  failed_over = true;
  const Clock::time_point until = Clock::now() + 5s;
  while (victim_ok_after < 5 && Clock::now() < until) std::this_thread::sleep_for(20ms);
  stop = true;
  loop.join();

  CHECK(wrong == 0);
  CHECK(other_failed == 0);
  CHECK(victim_unavailable > 0);
  CHECK(victim_ok_after >= 5);
  CHECK(slowest_ms < 3 * config.command_timeout.count());
  CHECK(rc.master_of_slot(Cluster::slot_of(victim_tag)) != victim);
  INFO("slowest execute " << slowest_ms << " ms");
}

}  // namespace
}  // namespace kvtier::redis
