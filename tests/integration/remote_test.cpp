// The remote tier through two kvtierd instances ("host A" and "host B", each with its own
// socket, shared memory and state directory) sharing one real Redis Cluster started by the
// test (tests/testing/redis_cluster.h): cross-host hits byte-exact, write-back and
// write-through, values larger than remote.max_value_bytes, corrupt and misplaced values
// dropped, a killed master (misses, then hits after failover), a slot migrated under load, a get
// that arrives while the daemon connects (past a seed that hangs), and a daemon started without a
// reachable cluster.
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"
#include "tests/testing/redis_cluster.h"
#include "tiers/remote/redis_cluster.h"
#include "tiers/remote/remote_format.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;
using kvtier::testing::RedisCluster;

namespace {

constexpr uint64_t kTokens = 64;  // 32 KiB per tensor, 64 KiB per block

void must(const Status& s) {
  INFO(s.to_string());
  REQUIRE(s.is_ok());
}

nlohmann::json remote_stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value())["tiers"]["remote"];
}

std::vector<BlockKey> chain(std::string_view ns, size_t n, uint32_t first_token = 1) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), first_token);
  return chain_keys(ns, tokens, 16);
}

// The cluster's nodes as a TOML list, after `first` when given.
std::string seeds_toml(const RedisCluster& cluster, const std::string& first = {}) {
  std::vector<std::string> seeds = cluster.seeds();
  if (!first.empty()) seeds.insert(seeds.begin(), first);
  std::string s = "[";
  for (const std::string& a : seeds) s += (s.size() > 1 ? ", \"" : "\"") + a + "\"";
  return s + "]";
}

// A "node" that hangs: it listens (the kernel completes connections into its backlog) and never
// accepts or answers, as a paused Redis does.
class HungNode {
 public:
  HungNode() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    address_ = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  }
  ~HungNode() { ::close(fd_); }
  HungNode(const HungNode&) = delete;
  HungNode& operator=(const HungNode&) = delete;
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

// A "host": kvtierd with the cluster as its remote tier.  Namespaces: fp/ lossless and
// write-through, q/ NF4 write-through, wb/ lossless write-back, raw/ lossless uncompressed
// write-through, local/ never remote.
// `command_timeout_ms`: a host whose gets must not time out while the machine is loaded (a
// timed-out command is a miss, by design) gets more than the default 1 s.
// `first_seed`: a seed listed before the cluster's nodes.
DaemonOptions host_options(const RedisCluster& cluster, const std::string& more = {},
                           uint32_t command_timeout_ms = 1000, const std::string& first_seed = {}) {
  DaemonOptions o;
  o.host_bytes = 32ull << 20;
  o.disk = false;  // a hit on host B can only come from the cluster
  o.extra_toml = "[remote]\nseeds = " + seeds_toml(cluster, first_seed) +
                 "\ncommand_timeout_ms = " + std::to_string(command_timeout_ms) +
                 "\nconnect_timeout_ms = 300\n"
                 "lookup_timeout_ms = 2000\nmax_value_bytes = \"64KiB\"\n" +
                 more +
                 "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
                 "[[namespace]]\nprefix = \"fp/\"\ncodec = \"fp16\"\nremote = \"writethrough\"\n"
                 "[[namespace]]\nprefix = \"q/\"\ncodec = \"nf4\"\nremote = \"writethrough\"\n"
                 "[[namespace]]\nprefix = \"wb/\"\ncodec = \"fp16\"\nremote = \"writeback\"\n"
                 "[[namespace]]\nprefix = \"raw/\"\ncodec = \"fp16\"\ncompress = false\n"
                 "remote = \"writethrough\"\n";
  return o;
}

std::unique_ptr<Client> connect(const Daemon& d) {
  auto c = Client::connect(d.socket());
  REQUIRE(c);
  return std::move(*c);
}

// Until host `c` sees `n` leading keys (the writes are asynchronous), at most 20 s.
uint32_t wait_lookup(Client& c, std::string_view ns, std::span<const BlockKey> keys, uint32_t n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  uint32_t got = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    got = c.lookup(ns, keys).value();
    if (got >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return got;
}

void put_all(Client& c, std::string_view ns, std::span<const BlockKey> keys) {
  for (const BlockKey& k : keys) {
    KvBlock b(k, kTokens);
    must(c.put(ns, k, b.tensors));
  }
}

}  // namespace

TEST_CASE("remote: host B finds host A's prefix in the cluster and reads it byte-exact") {
  RedisCluster cluster(testing::RedisClusterOptions{3, 0});
  Daemon a(host_options(cluster)), b(host_options(cluster));
  auto ca = connect(a);
  auto cb = connect(b);

  SECTION("fp16, lossless") {
    const auto keys = chain("fp/m", 12);
    put_all(*ca, "fp/m", keys);
    // Local-only lookups on B see nothing; remote lookups see the whole chain.
    REQUIRE(wait_lookup(*cb, "fp/m", keys, 12) == 12);
    CHECK(cb->lookup("fp/m", keys, LookupOptions{true}).value() == 0);
    auto lease = cb->get("fp/m", keys);
    REQUIRE(lease);
    for (size_t i = 0; i < keys.size(); ++i) {
      INFO("block " << i);
      CHECK(testing::check_kv_block(lease->blocks()[i], kTokens));
    }
    // Promoted into B's host tier: now a local hit.
    CHECK(cb->lookup("fp/m", keys, LookupOptions{true}).value() == 12);
    auto s = remote_stats(*cb);
    CHECK(s["hits"].get<uint64_t>() == 12);
    CHECK(s["corrupt_dropped"].get<uint64_t>() == 0);
    CHECK(remote_stats(*ca)["writes"].get<uint64_t>() == 12);
  }

  SECTION("nf4: host B serves exactly the bytes host A stored") {
    const auto keys = chain("q/m", 6);
    for (const BlockKey& k : keys) {
      std::vector<float> kv(2 * kTokens * 128);
      for (size_t i = 0; i < kv.size(); ++i) kv[i] = float(int((i * 37 + k.lo) % 200) - 100) / 50;
      const TensorIn t[] = {{"k", DType::kF32, {kTokens, 128}, kv.data()},
                            {"v", DType::kF32, {kTokens, 128}, kv.data() + kTokens * 128}};
      must(ca->put("q/m", k, t));
    }
    REQUIRE(wait_lookup(*cb, "q/m", keys, 6) == 6);
    auto la = ca->get("q/m", keys);
    auto lb = cb->get("q/m", keys);
    REQUIRE(la);
    REQUIRE(lb);
    for (size_t i = 0; i < keys.size(); ++i) {
      INFO("block " << i);
      const LeasedBlock& x = la->blocks()[i];
      const LeasedBlock& y = lb->blocks()[i];
      REQUIRE(x.found());
      REQUIRE(y.found());
      for (const char* name : {"k", "v"}) {
        const TensorView* tx = x.tensor(name);
        const TensorView* ty = y.tensor(name);
        REQUIRE(tx);
        REQUIRE(ty);
        CHECK(tx->codec == Codec::kNf4);
        REQUIRE(tx->bytes == ty->bytes);
        CHECK(std::memcmp(tx->data, ty->data, tx->bytes) == 0);
        CHECK(ty->verify());
      }
    }
  }

  SECTION("a block larger than max_value_bytes travels in parts") {
    const auto keys = chain("raw/big", 2);
    for (const BlockKey& k : keys) {
      KvBlock big(k, 512);  // 256 KiB per tensor: 9 parts of 64 KiB
      must(ca->put("raw/big", k, big.tensors));
    }
    REQUIRE(wait_lookup(*cb, "raw/big", keys, 2) == 2);
    auto lease = cb->get("raw/big", keys);
    REQUIRE(lease);
    for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, 512));
    // Several parts, all in one slot: the node that holds part 0 holds the last one too.
    const std::string node = cluster.master_of_slot(
        redis::Cluster::slot_of(remote::value_key("kvtier", "raw/big", keys[0])));
    const auto v0 = cluster.run(node, {"GET", remote::value_key("kvtier", "raw/big", keys[0])});
    remote::ValueHeader h;
    REQUIRE(remote::decode_header(v0.str, h));
    CHECK(h.parts >= 2);
    const auto last =
        cluster.run(node, {"GET", remote::value_key("kvtier", "raw/big", keys[0], h.parts - 1)});
    CHECK(last.type == testing::RedisValue::Type::kString);
  }

  SECTION("write-back: what host A evicts, host B finds") {
    const auto keys = chain("wb/m", 2000);  // 64 MiB through a 32 MiB host arena
    put_all(*ca, "wb/m", keys);
    // The first blocks left A's host tier: written back to the cluster.
    REQUIRE(wait_lookup(*cb, "wb/m", std::span(keys).first(50), 50) == 50);
    auto lease = cb->get("wb/m", std::span(keys).first(50));
    REQUIRE(lease);
    for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
    CHECK(remote_stats(*ca)["writes"].get<uint64_t>() >= 50);
  }

  SECTION("namespaces without a remote policy stay on their host") {
    const auto keys = chain("local/m", 4);
    put_all(*ca, "local/m", keys);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(cb->lookup("local/m", keys).value() == 0);
    CHECK(remote_stats(*ca)["writes"].get<uint64_t>() == 0);
  }

  SECTION("remove deletes the cluster's copy too") {
    const auto keys = chain("fp/rm", 3);
    put_all(*ca, "fp/rm", keys);
    REQUIRE(wait_lookup(*cb, "fp/rm", keys, 3) == 3);
    must(ca->remove("fp/rm", std::span(keys).first(1)).status());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (cb->lookup("fp/rm", keys).value() != 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(cb->lookup("fp/rm", keys).value() == 0);
  }
}

TEST_CASE("remote: corrupt, misplaced and flushed values are dropped, counted, never served") {
  RedisCluster cluster(testing::RedisClusterOptions{3, 0});
  Daemon a(host_options(cluster)), b(host_options(cluster));
  auto ca = connect(a);
  auto cb = connect(b);
  const auto keys = chain("fp/bad", 8);
  put_all(*ca, "fp/bad", keys);
  REQUIRE(wait_lookup(*cb, "fp/bad", keys, 8) == 8);
  auto key_of = [&](size_t i) { return remote::value_key("kvtier", "fp/bad", keys[i]); };
  auto run = [&](size_t i, std::vector<std::string> argv) {
    return cluster.run(cluster.master_of_slot(redis::Cluster::slot_of(key_of(i))), argv);
  };
  // 1: a payload byte flipped (the last); 2: a header byte flipped.
  const std::string v1 = run(1, {"GET", key_of(1)}).str;
  REQUIRE(v1.size() > 1000);
  run(1, {"SETRANGE", key_of(1), std::to_string(v1.size() - 1), std::string(1, char(~v1.back()))});
  run(2, {"SETRANGE", key_of(2), "30", "X"});
  // 3: block 4's value stored under block 3's key (a value under another key).
  const std::string copy = run(4, {"GET", key_of(4)}).str;
  REQUIRE(copy.size() > 1000);
  run(3, {"SET", key_of(3), copy});

  auto lease = cb->get("fp/bad", keys);
  REQUIRE(lease);
  for (size_t i = 0; i < keys.size(); ++i) {
    INFO("block " << i);
    const LeasedBlock& blk = lease->blocks()[i];
    if (i == 1 || i == 2 || i == 3) {
      CHECK_FALSE(blk.found());
    } else {
      CHECK(testing::check_kv_block(blk, kTokens));
    }
  }
  CHECK(remote_stats(*cb)["corrupt_dropped"].get<uint64_t>() == 3);
  // Dropped from the cluster: a second host's lookup stops at block 1 now.
  CHECK(cb->lookup("fp/bad", keys, LookupOptions{true}).value() == 1);

  // A node flushed: its blocks become misses, the others still hit.
  const auto keys2 = chain("fp/flush", 30);
  put_all(*ca, "fp/flush", keys2);
  REQUIRE(wait_lookup(*cb, "fp/flush", keys2, 30) == 30);
  const std::string victim = cluster.master_of_slot(
      redis::Cluster::slot_of(remote::value_key("kvtier", "fp/flush", keys2[0])));
  cluster.run(victim, {"FLUSHALL"});
  auto l2 = cb->get("fp/flush", keys2);
  REQUIRE(l2);
  size_t hits = 0;
  for (size_t i = 0; i < keys2.size(); ++i) {
    const LeasedBlock& blk = l2->blocks()[i];
    const bool on_victim = cluster.master_of_slot(redis::Cluster::slot_of(
                               remote::value_key("kvtier", "fp/flush", keys2[i]))) == victim;
    if (on_victim) {
      CHECK_FALSE(blk.found());
    } else {
      CHECK(testing::check_kv_block(blk, kTokens));
      ++hits;
    }
  }
  CHECK(hits > 0);
  CHECK(hits < keys2.size());
}

TEST_CASE("remote: a killed master costs misses, never errors or wrong bytes; hits resume") {
  RedisCluster cluster(testing::RedisClusterOptions{3, 1});
  Daemon a(host_options(cluster)), b(host_options(cluster));
  auto ca = connect(a);
  auto cb = connect(b);
  const auto keys = chain("fp/ha", 60);
  put_all(*ca, "fp/ha", keys);
  REQUIRE(wait_lookup(*cb, "fp/ha", keys, 60) == 60);
  for (const std::string& m : cluster.masters()) cluster.run(m, {"WAIT", "1", "2000"});

  // Load from both hosts while a master dies: every answer is a hit with the right bytes or a
  // miss.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0}, errors{0}, reads{0};
  auto reader = [&](const Daemon& d, uint32_t salt) {
    auto c = connect(d);
    while (!stop) {
      const auto fresh = chain("fp/ha-load", 4, 100000 + salt * 1000 + uint32_t(reads % 500) * 64);
      for (const BlockKey& k : fresh) {
        KvBlock blk(k, kTokens);
        Status st = c->put("fp/ha-load", k, blk.tensors);
        if (!st && st.code() != Errc::kAlreadyExists) ++errors;
      }
      auto lease = c->get("fp/ha", keys);
      if (!lease) {
        ++errors;
        continue;
      }
      for (const auto& blk : lease->blocks())
        if (blk.found() && !testing::check_kv_block(blk, kTokens)) ++wrong;
      ++reads;
    }
  };
  std::thread ta(reader, std::cref(a), 1), tb(reader, std::cref(b), 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string victim = cluster.master_of_slot(
      redis::Cluster::slot_of(remote::value_key("kvtier", "fp/ha", keys[0])));
  cluster.kill_node(victim);
  // A host that has not promoted the block yet gets a miss while the slot has no master.
  Daemon c_host(host_options(cluster));
  auto cc = connect(c_host);
  auto during = cc->get("fp/ha", keys);
  REQUIRE(during);
  for (const auto& blk : during->blocks())
    if (blk.found()) CHECK(testing::check_kv_block(blk, kTokens));
  cluster.wait_failover(victim);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  stop = true;
  ta.join();
  tb.join();
  CHECK(wrong == 0);
  CHECK(errors == 0);
  CHECK(reads > 0);
  // After the replica took over: every block hits again, through the same daemons.
  Daemon d_host(host_options(cluster));
  auto cd = connect(d_host);
  auto after = cd->get("fp/ha", keys);
  REQUIRE(after);
  for (const auto& blk : after->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
}

TEST_CASE("remote: a slot migrated under load loses nothing (MOVED and ASK followed)") {
  RedisCluster cluster(testing::RedisClusterOptions{3, 0});
  Daemon a(host_options(cluster)), b(host_options(cluster));
  auto ca = connect(a);
  auto cb = connect(b);
  const auto keys = chain("fp/mig", 40);
  put_all(*ca, "fp/mig", keys);
  REQUIRE(wait_lookup(*cb, "fp/mig", keys, 40) == 40);
  const std::string key0 = remote::value_key("kvtier", "fp/mig", keys[0]);
  const uint16_t slot = redis::Cluster::slot_of(key0);
  const std::string from = cluster.master_of_slot(slot);
  std::string to;
  for (const std::string& m : cluster.masters())
    if (m != from) to = m;

  // Host B keeps probing (lookups do not promote: every one asks the cluster) while the slot
  // moves; every answer is the whole chain.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> short_answers{0}, rounds{0};
  std::thread t([&] {
    auto c = connect(b);
    do {
      if (c->lookup("fp/mig", keys).value() != 40) ++short_answers;
      ++rounds;
    } while (!stop);
  });

  // Half-way: block 0's value has moved, the slot is still the source's.  A get from a host
  // that has nothing local follows ASK to the target.
  cluster.begin_migration(slot, from, to);
  cluster.move_keys(from, to, {key0});
  {
    // Nothing here should time out: a GET answered after 1 s on a loaded 2-vCPU machine
    // (three redis-servers, three daemons and the probing thread above) would read as a
    // miss, and this case is about following ASK, not about timeouts.
    Daemon c_host(host_options(cluster, {}, 10000));
    auto cc = connect(c_host);
    auto lease = cc->get("fp/mig", keys);
    REQUIRE(lease);
    for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
    CHECK(remote_stats(*cc)["ask"].get<uint64_t>() > 0);
  }
  cluster.finish_migration(slot, from, to);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  t.join();
  CHECK(short_answers == 0);
  CHECK(rounds > 0);
  // Host B's cluster client learnt the new owner from a MOVED reply.
  CHECK(remote_stats(*cb)["moved"].get<uint64_t>() > 0);
  CHECK(cluster.master_of_slot(slot) == to);
  Daemon d_host(host_options(cluster));
  auto cd = connect(d_host);
  auto lease = cd->get("fp/mig", keys);
  REQUIRE(lease);
  for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
}

TEST_CASE("remote: a get that arrives while the daemon connects waits for the cluster") {
  // The first seed accepts and never answers: the daemon's first connection attempt (it starts
  // with the daemon, off the request path) spends a command timeout on it before the next seed
  // answers.  A get sent meanwhile must wait for that attempt, not report every block missing.
  RedisCluster cluster(testing::RedisClusterOptions{3, 0});
  Daemon a(host_options(cluster)), b(host_options(cluster));
  auto ca = connect(a);
  auto cb = connect(b);
  const auto keys = chain("fp/start", 8);
  put_all(*ca, "fp/start", keys);
  REQUIRE(wait_lookup(*cb, "fp/start", keys, 8) == 8);

  HungNode hung;
  Daemon c(host_options(cluster, {}, 1000, hung.address()));
  auto cc = connect(c);
  auto lease = cc->get("fp/start", keys);
  REQUIRE(lease);
  for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
  auto s = remote_stats(*cc);
  CHECK(s["connects"].get<uint64_t>() == 1);
  CHECK(s["connect_failures"].get<uint64_t>() == 0);
}

TEST_CASE("remote: a daemon whose cluster is unreachable serves from its own tiers") {
  DaemonOptions o;
  o.disk = false;
  o.extra_toml =
      "[remote]\nseeds = [\"127.0.0.1:1\"]\nconnect_timeout_ms = 100\nlookup_timeout_ms = 200\n"
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\nremote = \"writethrough\"\n";
  Daemon d(o);
  auto c = connect(d);
  const auto keys = chain("x/m", 4);
  put_all(*c, "x/m", keys);
  CHECK(c->lookup("x/m", keys).value() == 4);
  const auto other = chain("x/other", 4);
  CHECK(c->lookup("x/other", other).value() == 0);  // remote step: unreachable = a miss
  auto lease = c->get("x/m", keys);
  REQUIRE(lease);
  for (const auto& blk : lease->blocks()) CHECK(testing::check_kv_block(blk, kTokens));
  auto s = remote_stats(*c);
  CHECK(s["connected"].get<uint64_t>() == 0);
  CHECK(s["connect_failures"].get<uint64_t>() > 0);
}
