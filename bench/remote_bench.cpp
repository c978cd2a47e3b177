// remote_bench: the remote tier against bare Redis (issue: the remote tier on Redis Cluster).
//
// Starts a 3-master Redis Cluster on loopback (tests/testing/redis_cluster.h) and two kvtierd
// ("host A" writes through to the cluster, "host B" reads), then measures in the same run:
//
//   remote get       host B's get + release of a 2 MiB fp16 block only the cluster holds
//                    (fetch, checks, copy into B's host tier, lease), per block
//   bare GET         a hiredis GET of the same value bytes from the node that owns the key, on
//                    a connection opened beforehand (the floor for moving those bytes)
//   remote lookup    host B's lookup of a 32-key chain that only the cluster holds (one probe:
//                    EXISTS pipelined per node)
//   pipelined round trip   32 EXISTS pipelined on one connection to one node
//   remote miss      host B's lookup of 32 keys nowhere, remote probe on vs local_only
//
//   remote_bench [--quick] [--blocks N]
#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"
#include "tests/testing/redis_cluster.h"
#include "tiers/remote/redis_cluster.h"
#include "tiers/remote/remote_format.h"

using namespace kvtier;
using namespace kvtier::bench;

namespace {

std::string seeds_toml(const testing::RedisCluster& cluster) {
  std::string s = "[";
  for (const std::string& a : cluster.seeds()) s += (s.size() > 1 ? ", \"" : "\"") + a + "\"";
  return s + "]";
}

testing::DaemonOptions host(const testing::RedisCluster& cluster) {
  testing::DaemonOptions o;
  o.host_bytes = 512ull << 20;
  o.prefault =
      true;  // the production default (host.prefault): no first-touch faults in the timings
  o.staging_bytes = 8ull << 20;
  o.max_message_bytes = 8ull << 20;
  o.disk = false;
  // Lossless and uncompressed: the bytes in the cluster are the bytes the client put, so the
  // bare GET moves exactly as many.
  o.extra_toml = "[remote]\nseeds = " + seeds_toml(cluster) +
                 "\nmax_value_bytes = \"8MiB\"\nlookup_timeout_ms = 1000\n"
                 "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ncompress = false\n"
                 "remote = \"writethrough\"\n";
  return o;
}

std::vector<BlockKey> chain(std::string_view ns, size_t n, uint32_t first) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), first);
  return chain_keys(ns, tokens, 16);
}

void row(const char* what, const char* ours, const Latency& a, const char* base, const Latency& b) {
  std::printf("| %-34s | %9.1f / %9.1f us | %-30s | %9.1f / %9.1f us | %5.2fx |\n", what, a.p50_us,
              a.p99_us, base, b.p50_us, b.p99_us, b.p50_us > 0 ? a.p50_us / b.p50_us : 0.0);
  (void)ours;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  size_t blocks = 48;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
      blocks = 4;
    } else if (!std::strcmp(argv[i], "--blocks") && i + 1 < argc) {
      blocks = std::stoul(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--blocks N]\n", argv[0]);
      return 2;
    }
  }
  testing::RedisCluster cluster(testing::RedisClusterOptions{3, 0});
  testing::Daemon a(host(cluster)), b(host(cluster));
  auto ca = std::move(Client::connect(a.socket()).value());
  auto cb = std::move(Client::connect(b.socket()).value());

  // 2 MiB blocks: k and v of [4096, 128] fp16.
  const uint64_t tokens = 4096;
  const auto keys = chain("bench/m", blocks, 1);
  std::vector<uint16_t> data(tokens * 128);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint16_t(i * 2654435761u >> 13);
  for (const BlockKey& k : keys) {
    TensorIn t{"kv", DType::kF16, {tokens * 2, 128}, nullptr};
    std::vector<uint16_t> both(tokens * 2 * 128);
    std::memcpy(both.data(), data.data(), data.size() * 2);
    std::memcpy(both.data() + data.size(), data.data(), data.size() * 2);
    both[0] = uint16_t(k.lo);  // distinct blocks
    t.data = both.data();
    if (Status st = ca->put("bench/m", k, std::span(&t, 1)); !st) {
      std::fprintf(stderr, "put: %s\n", st.to_string().c_str());
      return 1;
    }
  }
  // Until the cluster has every block (write-through is asynchronous).
  for (int i = 0; i < 2000 && cb->lookup("bench/m", keys).value() < keys.size(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));

  // Remote get: each block once (a second get would be a local hit).
  std::vector<uint64_t> remote_ns, bare_ns;
  uint64_t block_bytes = 0;
  for (const BlockKey& k : keys) {
    const uint64_t t0 = now_ns();
    auto lease = cb->get("bench/m", std::span(&k, 1));
    const uint64_t t1 = now_ns();
    if (!lease || !lease->blocks()[0].found()) {
      std::fprintf(stderr, "remote get missed\n");
      return 1;
    }
    block_bytes = lease->blocks()[0].tensors[0].bytes;
    remote_ns.push_back(t1 - t0);
  }
  // Bare GET of the same values, each from its own node, on a connection per node opened and
  // warmed (one GET of a 2 MiB value) beforehand.
  std::vector<std::string> value_keys;
  for (const BlockKey& k : keys) value_keys.push_back(remote::value_key("kvtier", "bench/m", k));
  std::map<std::string, redisContext*> conns;
  for (const std::string& vk : value_keys) {
    const std::string node = cluster.master_of_slot(redis::Cluster::slot_of(vk));
    if (conns.count(node)) continue;
    const size_t colon = node.rfind(':');
    redisContext* c =
        redisConnect(node.substr(0, colon).c_str(), std::stoi(node.substr(colon + 1)));
    freeReplyObject(redisCommand(c, "GET %b", vk.data(), vk.size()));
    conns[node] = c;
  }
  uint64_t value_bytes = 0;
  for (const std::string& vk : value_keys) {
    redisContext* c = conns[cluster.master_of_slot(redis::Cluster::slot_of(vk))];
    const uint64_t t0 = now_ns();
    auto* r = static_cast<redisReply*>(redisCommand(c, "GET %b", vk.data(), vk.size()));
    do_not_optimize(read_sum(r->str, r->len));
    const uint64_t t1 = now_ns();
    value_bytes = r->len;
    freeReplyObject(r);
    bare_ns.push_back(t1 - t0);
  }
  for (auto& [node, c] : conns) redisFree(c);

  // The cluster client alone (warm pool), GETting the same values: what the worker's fetch
  // costs before any check or copy.
  std::vector<uint64_t> client_ns;
  {
    redis::ClusterConfig cc;
    cc.seeds = cluster.seeds();
    auto rc = redis::Cluster::connect(cc);
    if (!rc) return 1;
    for (int pass = 0; pass < 2; ++pass)
      for (const std::string& vk : value_keys) {
        const redis::Command get{{"GET", vk}, 1};
        const uint64_t t0 = now_ns();
        auto r = (*rc)->execute(std::span(&get, 1));
        do_not_optimize(read_sum(r.front()->str().data(), r.front()->str().size()));
        if (pass == 1) client_ns.push_back(now_ns() - t0);
      }
  }

  // Lookups of a 32-key chain only the cluster holds (host B never gets these).
  const auto probe_keys = chain("bench/probe", 32, 1000000);
  for (const BlockKey& k : probe_keys) {
    std::vector<uint16_t> small(64 * 128, 1);
    small[0] = uint16_t(k.lo);
    TensorIn t{"kv", DType::kF16, {64, 128}, small.data()};
    (void)ca->put("bench/probe", k, std::span(&t, 1));
  }
  for (int i = 0; i < 2000 && cb->lookup("bench/probe", probe_keys).value() < 32; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const int iters = quick ? 20 : 500;
  std::vector<uint64_t> lookup_ns, pipe_ns, miss_remote_ns, miss_local_ns;
  for (int i = 0; i < iters; ++i) {
    const uint64_t t0 = now_ns();
    const uint32_t n = cb->lookup("bench/probe", probe_keys).value();
    lookup_ns.push_back(now_ns() - t0);
    if (n != 32) std::fprintf(stderr, "remote lookup found %u of 32\n", n);
  }
  {
    const std::string node = cluster.seeds().front();
    const size_t colon = node.rfind(':');
    redisContext* c =
        redisConnect(node.substr(0, colon).c_str(), std::stoi(node.substr(colon + 1)));
    std::vector<std::string> names;
    for (int j = 0; j < 32; ++j) names.push_back("{bench}" + std::to_string(j));
    for (int i = 0; i < iters; ++i) {
      const uint64_t t0 = now_ns();
      for (const std::string& n : names) redisAppendCommand(c, "EXISTS %b", n.data(), n.size());
      for (size_t j = 0; j < names.size(); ++j) {
        void* r = nullptr;
        redisGetReply(c, &r);
        freeReplyObject(r);
      }
      pipe_ns.push_back(now_ns() - t0);
    }
    redisFree(c);
  }
  const auto nowhere = chain("bench/nowhere", 32, 2000000);
  for (int i = 0; i < iters; ++i) {
    uint64_t t0 = now_ns();
    (void)cb->lookup("bench/nowhere", nowhere).value();
    miss_remote_ns.push_back(now_ns() - t0);
    t0 = now_ns();
    (void)cb->lookup("bench/nowhere", nowhere, LookupOptions{true}).value();
    miss_local_ns.push_back(now_ns() - t0);
  }

  const Latency rg = summarize(remote_ns), bg = summarize(bare_ns);
  const Latency lk = summarize(lookup_ns), pp = summarize(pipe_ns);
  const Latency mr = summarize(miss_remote_ns), ml = summarize(miss_local_ns);
  const Latency cg = summarize(client_ns);
  std::printf("remote_bench: 3-master Redis Cluster on loopback, %zu blocks of %s, %d lookups\n\n",
              keys.size(), size_name(block_bytes).c_str(), iters);
  std::printf("| %-34s | %-25s | %-30s | %-25s | ratio |\n", "metric", "kvtier p50 / p99",
              "baseline", "baseline p50 / p99");
  std::printf("|---|---|---|---|---|\n");
  row("remote get + lease, 2 MiB block", "", rg, "hiredis GET of the same value", bg);
  row("cluster client GET (warm pool)", "", cg, "hiredis GET of the same value", bg);
  row("remote lookup, 32-key chain", "", lk, "32 EXISTS, one pipelined trip", pp);
  row("lookup miss, remote probe", "", mr, "the same lookup, local_only", ml);
  std::printf(
      "\nthroughput: remote get %.2f GB/s of block bytes (p50), bare GET %.2f GB/s of "
      "value bytes (p50): %.2fx of bare GET\n",
      block_bytes / (rg.p50_us * 1e3), value_bytes / (bg.p50_us * 1e3),
      (block_bytes / rg.p50_us) / (value_bytes / bg.p50_us));
  std::printf("a remote miss adds %.1f us (p50) to a local lookup\n", mr.p50_us - ml.p50_us);
  // Where a remote get's time goes: the worker's fetch (Redis round trips and checks).
  const auto st = nlohmann::json::parse(cb->stats_json().value())["tiers"]["remote"];
  auto mean_us = [&](const char* h) {
    const auto& x = st[h];
    const double n = x["count"].get<double>();
    return n > 0 ? x["sum"].get<double>() * 1e6 / n : 0.0;
  };
  std::printf("host B's workers: fetch mean %.1f us, probe mean %.1f us; round trips %llu\n",
              mean_us("fetch_latency"), mean_us("probe_latency"),
              (unsigned long long)st["round_trips"].get<uint64_t>());
  return 0;
}
