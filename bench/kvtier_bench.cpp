// kvtier_bench: the host tier's foundation benchmark (issue 2).
//
// Starts private kvtierd instances (io_threads = 2, then 1) and measures, for 64 KiB, 2 MiB
// and 32 MiB blocks: lookup latency (1 key and a 16-key chain), get+release latency, put
// throughput and read bandwidth from a lease; next to memcpy / read-sum bandwidth and a
// Unix-socket ping-pong measured in the same run, and against a loopback redis-server
// storing the same blocks.  Prints one table; docs/benchmarks.md explains every row.
//
//   kvtier_bench            full run (about a minute on 2 vCPUs)
//   kvtier_bench --quick    smoke run: a few iterations of everything (CTest, label bench)
//   kvtier_bench --no-redis skip the Redis comparison
//   kvtier_bench --busy-poll US  kvtierd (daemon.busy_poll_us) and this client
//                (ClientOptions::busy_poll_us) poll US microseconds before sleeping; the
//                ping-pong baseline polls the same way.  The client then talks to the
//                daemon through its shared-memory request channel; with
//                $KVTIER_REQUEST_CHANNEL=0 through the socket (docs/benchmarks.md, "Fifth
//                session", has both)
#include <hiredis/hiredis.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"

namespace kvtier::bench {
namespace {

// The lookup rows measure the daemon's answer (socket or request channel); lookups from the
// shared index are lookup_bench's.
const LookupOptions kDaemonLookup{false, LookupSource::kDaemon};

constexpr uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;
constexpr size_t kChain = 16;  // keys per "scheduler" lookup
constexpr size_t kLookupBytes = 64;

// Iteration counts for one block size.
struct Plan {
  uint64_t bytes;
  int puts;        // distinct blocks stored (all kept: no eviction)
  int lookups;     // per lookup row; the ping-pong baselines use the same count
  int gets;        // get+release round trips
  int reads;       // lease reads (each: get, read the block, release)
  int redis_keys;  // blocks SET into Redis
  int redis_gets;
  int baseline_iters;
};

std::vector<Plan> make_plans(bool quick) {
  if (quick)
    return {{64 * KiB, 20, 200, 50, 20, 4, 20, 20},
            {2 * MiB, 18, 200, 50, 10, 2, 5, 10},
            {32 * MiB, 2, 200, 20, 4, 1, 2, 4}};
  return {{64 * KiB, 2000, 20000, 5000, 2000, 256, 2000, 20000},
          {2 * MiB, 200, 20000, 5000, 400, 32, 300, 1000},
          {32 * MiB, 16, 20000, 2000, 48, 4, 24, 64}};
}

// ---------------------------------------------------------------------------------------
// The table.

struct Row {
  std::string metric, size, kvtier, baseline, ratio, goal, met;
};

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, a);
  return buf;
}
std::string lat(const Latency& l) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f / %.1f us", l.p50_us, l.p99_us);
  return buf;
}
std::string bw(double g) {
  return fmt("%.2f GB/s", g);
}
std::string ratio(double r) {
  return fmt("%.2fx", r);
}

void print_table(const std::vector<Row>& rows) {
  const char* head[] = {"metric", "block", "kvtier", "baseline", "ratio", "goal", "met?"};
  size_t w[7];
  for (int c = 0; c < 7; ++c) w[c] = std::strlen(head[c]);
  auto cells = [](const Row& r) {
    return std::vector<const std::string*>{&r.metric, &r.size, &r.kvtier, &r.baseline,
                                           &r.ratio,  &r.goal, &r.met};
  };
  for (const auto& r : rows) {
    auto c = cells(r);
    for (int i = 0; i < 7; ++i) w[i] = std::max(w[i], c[i]->size());
  }
  auto line = [&](const std::vector<const char*>& v) {
    std::printf("|");
    for (int i = 0; i < 7; ++i) std::printf(" %-*s |", int(w[i]), v[i]);
    std::printf("\n");
  };
  line({head[0], head[1], head[2], head[3], head[4], head[5], head[6]});
  std::printf("|");
  for (int i = 0; i < 7; ++i) std::printf("%s|", std::string(w[i] + 2, '-').c_str());
  std::printf("\n");
  for (const auto& r : rows) {
    auto c = cells(r);
    line({c[0]->c_str(), c[1]->c_str(), c[2]->c_str(), c[3]->c_str(), c[4]->c_str(), c[5]->c_str(),
          c[6]->c_str()});
  }
}

// ---------------------------------------------------------------------------------------
// Redis: a private redis-server on loopback, driven with synchronous hiredis.

struct RedisResult {
  double set_gbps = 0;
  double get_gbps = 0;  // GET + read-sum of the reply, bytes / mean time
  Latency get;
};

std::optional<std::string> find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  for (size_t pos = 0; pos <= p.size();) {
    size_t end = p.find(':', pos);
    if (end == std::string::npos) end = p.size();
    std::string cand = p.substr(pos, end - pos) + "/" + name;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    pos = end + 1;
  }
  return std::nullopt;
}

class Redis {
 public:
  // nullopt with `why` set when Redis cannot be used.
  static std::unique_ptr<Redis> start(std::string& why) {
    auto bin = find_in_path("redis-server");
    if (!bin) {
      why = "not installed";
      return nullptr;
    }
    auto r = std::unique_ptr<Redis>(new Redis);
    r->port_ = free_tcp_port();
    const std::string port = std::to_string(r->port_);
    r->pid_ = ::fork();
    if (r->pid_ == 0) {
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::execl(bin->c_str(), bin->c_str(), "--port", port.c_str(), "--bind", "127.0.0.1", "--save",
              "", "--appendonly", "no", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 500; ++i) {  // up to 5 s for PING to answer
      if (::waitpid(r->pid_, nullptr, WNOHANG) == r->pid_) {
        r->pid_ = -1;
        why = "redis-server exited at start";
        return nullptr;
      }
      timeval tv{1, 0};
      redisContext* c = redisConnectWithTimeout("127.0.0.1", r->port_, tv);
      if (c && !c->err) {
        auto* reply = static_cast<redisReply*>(redisCommand(c, "PING"));
        bool ok = reply && reply->type == REDIS_REPLY_STATUS;
        if (reply) freeReplyObject(reply);
        if (ok) {
          r->ctx_ = c;
          return r;
        }
      }
      if (c) redisFree(c);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    why = "redis-server did not answer PING";
    return nullptr;
  }
  ~Redis() {
    if (ctx_) redisFree(ctx_);
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  RedisResult measure(const Plan& plan, const std::vector<std::byte>& payload) {
    RedisResult res;
    std::vector<std::string> keys;
    for (int i = 0; i < plan.redis_keys; ++i)
      keys.push_back("kvtier-bench:" + std::to_string(plan.bytes) + ":" + std::to_string(i));
    uint64_t t0 = now_ns();
    for (const auto& k : keys)
      check(command("SET %b %b", k.data(), k.size(), payload.data(), payload.size()));
    res.set_gbps = gbps(plan.bytes * keys.size(), now_ns() - t0);

    std::vector<uint64_t> samples;
    uint64_t sink = 0, total = 0;
    for (int i = 0; i < plan.redis_gets; ++i) {
      const auto& k = keys[size_t(i) % keys.size()];
      uint64_t s = now_ns();
      auto* reply = command("GET %b", k.data(), k.size());
      if (!reply || reply->type != REDIS_REPLY_STRING || reply->len != payload.size())
        throw std::runtime_error("redis GET returned something unexpected");
      sink += read_sum(reply->str, reply->len);
      freeReplyObject(reply);
      uint64_t dt = now_ns() - s;
      samples.push_back(dt);
      total += dt;
    }
    do_not_optimize(sink);
    res.get_gbps = gbps(plan.bytes * samples.size(), total);
    res.get = summarize(samples);
    for (const auto& k : keys) check(command("DEL %b", k.data(), k.size()));
    return res;
  }

 private:
  Redis() = default;
  redisReply* command(const char* f, ...) {
    va_list ap;
    va_start(ap, f);
    auto* r = static_cast<redisReply*>(redisvCommand(ctx_, f, ap));
    va_end(ap);
    if (r == nullptr) throw std::runtime_error(std::string("redis: ") + ctx_->errstr);
    return r;
  }
  static void check(redisReply* r) {
    bool err = r->type == REDIS_REPLY_ERROR;
    std::string msg = err ? std::string(r->str, r->len) : "";
    freeReplyObject(r);
    if (err) throw std::runtime_error("redis: " + msg);
  }
  pid_t pid_ = -1;
  int port_ = -1;
  redisContext* ctx_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// kvtier.

constexpr Placement kPlacements[] = {Placement::kScheduler, Placement::kSameCpu,
                                     Placement::kTwoCpus};
constexpr int kNumPlacements = 3;

// Latency results per placement (kPlacements order); n == 0 where a placement is impossible.
// Pinned placements pin this process to `self` and every daemon thread to `peer`.
struct KvLatency {
  Latency lookup1[kNumPlacements], chain[kNumPlacements], get_release[kNumPlacements];
  size_t chain_len = 0;
};

struct KvSize {
  KvLatency lat;
  double put_gbps = 0;
  double read_gbps = 0;       // read-sum from a held lease, mapping warm
  double read_cold_gbps = 0;  // same, page-table entries dropped first (first touch)
  double copy_gbps = 0;       // memcpy out of a held lease into a private buffer
  double full_gbps = 0;       // get + read-sum + release, bytes / mean time
  Latency full;
  // Per release mode (kReleaseModes order), unpinned: get + read-sum + release, and get +
  // release alone.
  Latency full_by_mode[3], get_release_by_mode[3];
  uint64_t evictions = 0;
};

constexpr ReleaseMode kReleaseModes[] = {ReleaseMode::kRoundTrip, ReleaseMode::kPosted,
                                         ReleaseMode::kDeferred};
const char* mode_name(int m) {
  return m == 0 ? "round-trip" : m == 1 ? "posted" : "deferred";
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r) throw std::runtime_error(std::string(what) + ": " + r.status().to_string());
  return std::move(r).value();
}
void must(Status s, const char* what) {
  if (!s) throw std::runtime_error(std::string(what) + ": " + s.to_string());
}

template <typename F>
Latency time_loop(int iters, int warmup, F&& f) {
  for (int i = 0; i < warmup; ++i) f(i);
  std::vector<uint64_t> samples(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    uint64_t t0 = now_ns();
    f(i);
    samples[size_t(i)] = now_ns() - t0;
  }
  return summarize(samples);
}

uint64_t sum_block(const LeasedBlock& b) {
  uint64_t s = 0;
  for (const auto& t : b.tensors) s += read_sum(t.data, t.bytes);
  return s;
}

// Drops this process's page-table entries for the block's pages (the shared memory itself
// is untouched), so the next read takes the faults a first read of the block would.
void drop_mapping(const LeasedBlock& b) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  for (const auto& t : b.tensors) {
    uintptr_t lo = uintptr_t(t.data) & ~(page - 1);
    uintptr_t hi = (uintptr_t(t.data) + t.bytes + page - 1) & ~(page - 1);
    ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  }
}

class KvBench {
 public:
  // `client` releases with a round trip (every row but the release-mode ones); `by_mode` has
  // one client per kReleaseModes entry.
  KvBench(testing::Daemon& daemon, Client& client, std::vector<Client*> by_mode, int run)
      : daemon_(daemon), client_(client), by_mode_(std::move(by_mode)), run_(run) {}

  KvSize measure(const Plan& plan, bool full) {
    KvSize res;
    const std::string ns =
        "bench/fp16/v1/run" + std::to_string(run_) + "/" + std::to_string(plan.bytes);
    std::vector<uint32_t> tokens(size_t(plan.puts + 1) * 16);
    std::iota(tokens.begin(), tokens.end(), 1u);
    auto all = chain_keys(ns, tokens, 16);
    std::vector<BlockKey> warm(all.end() - 1, all.end());
    std::vector<BlockKey> keys(all.begin(), all.end() - 1);

    // fp16 "k" and "v", half the block each.
    std::vector<std::byte> payload(plan.bytes);
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = std::byte(i * 2654435761u >> 13);
    const uint64_t half = plan.bytes / 2, cols = 128;
    std::vector<TensorIn> tensors = {
        {"k", DType::kF16, {half / 2 / cols, cols}, payload.data(), Nf4Layout::kColumnBlocks},
        {"v", DType::kF16, {half / 2 / cols, cols}, payload.data() + half, Nf4Layout::kRowBlocks}};

    // Puts: an untimed one maps and fault in the staging area, then distinct keys.
    for (const auto& k : warm) must(client_.put(ns, k, tensors), "put");
    uint64_t t0 = now_ns();
    for (const auto& k : keys) must(client_.put(ns, k, tensors), "put");
    res.put_gbps = gbps(plan.bytes * keys.size(), now_ns() - t0);
    res.evictions = evictions();

    // Lookups and get+release in each placement of this process and the daemon's threads.
    const size_t n = keys.size();
    res.lat.chain_len = std::min(kChain, n);
    const size_t windows = n - res.lat.chain_len + 1;
    const cpu_set_t all_cpus = get_affinity(daemon_.pid());
    for (int pinned = 0; pinned < kNumPlacements; ++pinned) {
      AffinityGuard guard;
      auto cpus = placement_cpus(kPlacements[pinned]);
      if (!cpus) continue;
      if (cpus->self >= 0) {
        set_affinity(0, single_cpu(cpus->self));
        set_process_affinity(daemon_.pid(), single_cpu(cpus->peer));
      }
      res.lat.lookup1[pinned] = time_loop(plan.lookups, 200, [&](int i) {
        if (must(client_.lookup(ns, {&keys[size_t(i) % n], 1}, kDaemonLookup), "lookup") != 1)
          throw std::runtime_error("lookup missed a stored key (evicted?)");
      });
      res.lat.chain[pinned] = time_loop(plan.lookups, 200, [&](int i) {
        std::span<const BlockKey> chain(&keys[size_t(i) % windows], res.lat.chain_len);
        if (must(client_.lookup(ns, chain, kDaemonLookup), "lookup") != res.lat.chain_len)
          throw std::runtime_error("chain lookup missed a stored key (evicted?)");
      });
      res.lat.get_release[pinned] = time_loop(plan.gets, 50, [&](int i) {
        auto lease = must(client_.get(ns, {&keys[size_t(i) % n], 1}), "get");
        if (lease.found() != 1) throw std::runtime_error("get missed a stored key");
        must(lease.release(), "release");
      });
      if (cpus->self >= 0) set_process_affinity(daemon_.pid(), all_cpus);
    }
    if (full) measure_reads(plan, ns, keys, res);
    must(client_.remove(ns, keys), "remove");
    must(client_.remove(ns, warm), "remove");
    return res;
  }

 private:
  void measure_reads(const Plan& plan, const std::string& ns, const std::vector<BlockKey>& keys,
                     KvSize& res) {
    const size_t m = std::min(keys.size(), size_t(plan.reads));
    uint64_t sink = 0;
    auto get1 = [&](size_t i) {
      auto lease = must(client_.get(ns, {&keys[i % m], 1}), "get");
      if (lease.found() != 1) throw std::runtime_error("get missed a stored key");
      return lease;
    };
    // One untimed pass so every block used below is mapped in this process.
    for (size_t i = 0; i < m; ++i) sink += sum_block(get1(i).block(0));

    uint64_t read_ns = 0, full_ns = 0;
    std::vector<uint64_t> full;
    for (int i = 0; i < plan.reads; ++i) {
      uint64_t t0 = now_ns();
      auto lease = get1(size_t(i));
      uint64_t t1 = now_ns();
      sink += sum_block(lease.block(0));
      uint64_t t2 = now_ns();
      must(lease.release(), "release");
      uint64_t t3 = now_ns();
      read_ns += t2 - t1;
      full_ns += t3 - t0;
      full.push_back(t3 - t0);
    }
    res.read_gbps = gbps(plan.bytes * uint64_t(plan.reads), read_ns);
    res.full_gbps = gbps(plan.bytes * uint64_t(plan.reads), full_ns);
    res.full = summarize(full);

    // First touch: this process's page-table entries for the block are dropped first.
    uint64_t cold_ns = 0, copy_ns = 0;
    for (int i = 0; i < plan.reads; ++i) {
      auto lease = get1(size_t(i));
      drop_mapping(lease.block(0));
      uint64_t t0 = now_ns();
      sink += sum_block(lease.block(0));
      cold_ns += now_ns() - t0;
      must(lease.release(), "release");
    }
    // Copy out into one private buffer (as a client staging a block for a GPU upload would).
    std::vector<std::byte> out(plan.bytes);
    std::memset(out.data(), 1, out.size());
    for (int i = 0; i < plan.reads; ++i) {
      auto lease = get1(size_t(i));
      uint64_t t0 = now_ns();
      size_t off = 0;
      for (const auto& t : lease.block(0).tensors) {
        std::memcpy(out.data() + off, t.data, std::min<uint64_t>(t.bytes, out.size() - off));
        off += t.bytes;
      }
      do_not_optimize(out[size_t(i) % out.size()]);
      copy_ns += now_ns() - t0;
      must(lease.release(), "release");
    }
    res.read_cold_gbps = gbps(plan.bytes * uint64_t(plan.reads), cold_ns);
    res.copy_gbps = gbps(plan.bytes * uint64_t(plan.reads), copy_ns);

    // The release modes, each on its own connection (mapped by an untimed pass first).
    for (int mode = 0; mode < 3; ++mode) {
      Client& c = *by_mode_[size_t(mode)];
      auto get = [&](size_t i) {
        auto lease = must(c.get(ns, {&keys[i % m], 1}), "get");
        if (lease.found() != 1) throw std::runtime_error("get missed a stored key");
        return lease;
      };
      for (size_t i = 0; i < m; ++i) sink += sum_block(get(i).block(0));
      res.full_by_mode[mode] = time_loop(plan.reads, 20, [&](int i) {
        auto lease = get(size_t(i));
        sink += sum_block(lease.block(0));
        must(lease.release(), "release");
      });
      res.get_release_by_mode[mode] = time_loop(plan.gets, 50, [&](int i) {
        auto lease = get(size_t(i));
        must(lease.release(), "release");
      });
      must(c.flush_releases(), "flush");
    }
    do_not_optimize(sink);
  }

  uint64_t evictions() {
    auto j = nlohmann::json::parse(must(client_.stats_json(), "stats"));
    return j["tiers"]["host"].value("evictions", uint64_t{0});
  }

  testing::Daemon& daemon_;
  Client& client_;
  std::vector<Client*> by_mode_;
  int run_;
};

// ---------------------------------------------------------------------------------------

std::string machine_line() {
  std::string model = "unknown CPU";
  std::ifstream in("/proc/cpuinfo");
  for (std::string l; std::getline(in, l);)
    if (l.rfind("model name", 0) == 0) {
      model = l.substr(l.find(':') + 2);
      break;
    }
  utsname u{};
  ::uname(&u);
  return std::to_string(std::thread::hardware_concurrency()) + " CPUs (" + model + "), Linux " +
         u.release;
}

int run(bool quick, bool use_redis, uint32_t busy_poll_us) {
  const auto plans = make_plans(quick);
  const size_t pool = quick ? 0 : 256 * MiB;
  std::printf("kvtier_bench%s: %s, busy poll %u us\n", quick ? " --quick" : "",
              machine_line().c_str(), busy_poll_us);
  std::fflush(stdout);

  // Baselines.
  struct Base {
    double memcpy_gbps, read_gbps;
  };
  std::vector<Base> base;
  for (const auto& p : plans)
    base.push_back({memcpy_gbps(p.bytes, p.baseline_iters, pool),
                    read_sum_gbps(p.bytes, p.baseline_iters, pool)});
  const int pp_iters = plans[0].lookups;
  std::optional<Latency> ping[kNumPlacements];
  for (int p = 0; p < kNumPlacements; ++p)
    ping[p] =
        socket_pingpong(pp_iters, kLookupBytes, kPlacements[p], quick ? 10 : 1000, busy_poll_us);

  // Redis.
  std::vector<std::optional<RedisResult>> redis(plans.size());
  std::string redis_note;
  if (use_redis) {
    std::string why;
    if (auto r = Redis::start(why)) {
      for (size_t i = 0; i < plans.size(); ++i) {
        std::vector<std::byte> payload(plans[i].bytes);
        for (size_t j = 0; j < payload.size(); ++j) payload[j] = std::byte(j * 2654435761u >> 13);
        redis[i] = r->measure(plans[i], payload);
      }
    } else {
      redis_note = "redis: skipped (" + why + ")";
    }
  } else {
    redis_note = "redis: skipped (--no-redis)";
  }
  if (!redis_note.empty()) std::printf("%s\n", redis_note.c_str());

  // kvtier: every size with the daemon's default io_threads (2), then the latency rows again
  // with io_threads = 1 at 2 MiB only (lookup cost does not depend on the block size).
  const uint32_t io_configs[] = {2, 1};
  const size_t io1_plan = 1;  // 2 MiB
  std::vector<std::vector<KvSize>> kv(2);
  for (int c = 0; c < 2; ++c) {
    testing::DaemonOptions o;
    o.host_bytes = quick ? 256 * MiB : 1 * GiB;
    o.prefault = true;
    o.staging_bytes = 64 * MiB;
    o.io_threads = io_configs[c];
    o.busy_poll_us = busy_poll_us;
    o.codec = "fp16";  // stored as given: the rows measure the lossless host tier
    testing::Daemon daemon(o);
    ClientOptions co;
    co.socket = daemon.socket();
    co.busy_poll_us = busy_poll_us;
    co.release_mode = ReleaseMode::kRoundTrip;
    auto client = must(Client::connect(co), "connect");
    std::vector<std::unique_ptr<Client>> mode_clients;
    std::vector<Client*> by_mode;
    for (ReleaseMode m : kReleaseModes) {
      co.release_mode = m;
      mode_clients.push_back(must(Client::connect(co), "connect"));
      by_mode.push_back(mode_clients.back().get());
    }
    KvBench b(daemon, *client, by_mode, c);
    try {
      for (size_t i = 0; i < plans.size(); ++i)
        kv[c].push_back(c == 0 || i == io1_plan ? b.measure(plans[i], c == 0) : KvSize{});
    } catch (const std::exception& e) {
      // Say what the daemon said before its state directory goes away.
      std::fprintf(stderr, "kvtier_bench: %s (kvtierd %s); its log:\n", e.what(),
                   daemon.running() ? "still running" : "exited");
      std::ifstream log(daemon.dir() / "kvtierd.log");
      std::fprintf(stderr, "%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
      throw;
    }
  }

  // The table.
  std::vector<Row> rows;
  auto latency_rows = [&](const char* what, auto pick, double base_mult, bool goal) {
    for (int c = 0; c < 2; ++c)
      for (int pin = 0; pin < kNumPlacements; ++pin)
        for (size_t i = 0; i < plans.size(); ++i) {
          if (c == 1 && i != io1_plan) continue;
          const KvLatency& l = kv[c][i].lat;
          const Latency& k = pick(l)[pin];
          if (k.n == 0 || !ping[pin]) continue;  // placement impossible (one CPU)
          Latency b = *ping[pin];
          b.p50_us *= base_mult;
          b.p99_us *= base_mult;
          std::string name = std::string(what);
          if (name.find('%') != std::string::npos) name = fmt(what, double(l.chain_len));
          const std::string where = placement_name(kPlacements[pin]);
          double r = k.p50_us / b.p50_us;
          // Unpinned, the two pairs may land differently (same or other CPU) by chance: only
          // the pinned placements are like-for-like, so only they carry the goal.
          const bool judged = goal && kPlacements[pin] != Placement::kScheduler;
          rows.push_back({name + " [io=" + std::to_string(io_configs[c]) + ", " + where + "]",
                          size_name(plans[i].bytes), lat(k),
                          lat(b) + (base_mult > 1 ? " 2x ping-pong " : " ping-pong ") + where,
                          ratio(r), judged ? "<= 2x" : "-",
                          judged ? (r <= 2.0 ? "yes" : "NO") : "-"});
        }
  };
  latency_rows(
      "lookup 1 key", [](const KvLatency& l) { return l.lookup1; }, 1, true);
  latency_rows(
      "lookup %.0f-key chain", [](const KvLatency& l) { return l.chain; }, 1, true);
  latency_rows(
      "get+release 1 block", [](const KvLatency& l) { return l.get_release; }, 2, false);
  for (size_t i = 0; i < plans.size(); ++i) {
    const KvSize& k = kv[0][i];
    const std::string sz = size_name(plans[i].bytes);
    std::string ev = k.evictions ? fmt(" (%.0f evictions!)", double(k.evictions)) : "";
    rows.push_back({"put (k+v fp16)" + ev, sz, bw(k.put_gbps), bw(base[i].memcpy_gbps) + " memcpy",
                    ratio(k.put_gbps / base[i].memcpy_gbps), "-", "-"});
    if (redis[i])
      rows.push_back({"put vs Redis SET", sz, bw(k.put_gbps), bw(redis[i]->set_gbps) + " SET",
                      ratio(k.put_gbps / redis[i]->set_gbps), "-", "-"});
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    const KvSize& k = kv[0][i];
    const std::string sz = size_name(plans[i].bytes);
    rows.push_back({"lease read-sum (zero-copy)", sz, bw(k.read_gbps),
                    bw(base[i].read_gbps) + " read-sum", ratio(k.read_gbps / base[i].read_gbps),
                    "-", "-"});
    rows.push_back({"lease read-sum, first touch", sz, bw(k.read_cold_gbps),
                    bw(base[i].read_gbps) + " read-sum",
                    ratio(k.read_cold_gbps / base[i].read_gbps), "-", "-"});
    rows.push_back({"lease memcpy out", sz, bw(k.copy_gbps), bw(base[i].memcpy_gbps) + " memcpy",
                    ratio(k.copy_gbps / base[i].memcpy_gbps), "-", "-"});
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    const KvSize& k = kv[0][i];
    const std::string sz = size_name(plans[i].bytes);
    const bool goal = plans[i].bytes == 2 * MiB;
    if (!redis[i]) {
      rows.push_back({"lease read-sum vs Redis GET", sz, bw(k.read_gbps), "skipped", "-",
                      goal ? ">= 10x" : "-", "-"});
      continue;
    }
    double r = k.read_gbps / redis[i]->get_gbps;
    rows.push_back({"lease read-sum vs Redis GET", sz, bw(k.read_gbps),
                    bw(redis[i]->get_gbps) + " GET", ratio(r), goal ? ">= 10x" : "-",
                    goal ? (r >= 10 ? "yes" : "NO") : "-"});
    double rf = k.full_gbps / redis[i]->get_gbps;
    rows.push_back({"get+read-sum+release vs Redis GET", sz, bw(k.full_gbps),
                    bw(redis[i]->get_gbps) + " GET", ratio(rf), "-", "-"});
    rows.push_back({"  same, latency", sz, lat(k.full), lat(redis[i]->get) + " GET",
                    ratio(k.full.p50_us / redis[i]->get.p50_us), "-", "-"});
  }
  // Release modes (docs/protocol.md, "Releases without a round trip"): Redis GET p50 over
  // kvtier p50, so higher is better here.  Goals: 64 KiB get + read + release >= 5x faster
  // than GET; 2 MiB get + release >= 100x.
  for (size_t i = 0; i < plans.size(); ++i) {
    if (!redis[i]) continue;
    const KvSize& k = kv[0][i];
    const std::string sz = size_name(plans[i].bytes);
    for (int mode = 0; mode < 3; ++mode) {
      const bool deferred = kReleaseModes[mode] == ReleaseMode::kDeferred;
      const Latency& f = k.full_by_mode[mode];
      const double rf = redis[i]->get.p50_us / f.p50_us;
      const bool goal_f = deferred && plans[i].bytes == 64 * 1024;
      rows.push_back({std::string("get+read-sum+release, ") + mode_name(mode) + " release", sz,
                      lat(f), lat(redis[i]->get) + " GET", fmt("%.1fx faster", rf),
                      goal_f ? ">= 5x faster" : "-", goal_f ? (rf >= 5 ? "yes" : "NO") : "-"});
      const Latency& g = k.get_release_by_mode[mode];
      const double rg = redis[i]->get.p50_us / g.p50_us;
      const bool goal_g = deferred && plans[i].bytes == 2 * MiB;
      rows.push_back({std::string("get+release, ") + mode_name(mode) + " release", sz, lat(g),
                      lat(redis[i]->get) + " GET", fmt("%.1fx faster", rg),
                      goal_g ? ">= 100x faster" : "-", goal_g ? (rg >= 100 ? "yes" : "NO") : "-"});
    }
  }
  std::printf("\n");
  print_table(rows);
  std::printf(
      "\nLegend (docs/benchmarks.md has the details):\n"
      "  latency cells are p50 / p99; ratio = kvtier p50 / baseline p50 (lower is better).\n"
      "  bandwidth cells are GB/s (1e9 B/s) = bytes / total time; ratio = kvtier / baseline.\n"
      "  ping-pong: %zu-byte messages over a Unix stream socketpair to a forked echo process,\n"
      "    same iteration count as each lookup row.  Placement of the two ends (for kvtier:\n"
      "    this process / every daemon thread): unpinned = the scheduler's choice; 1 CPU = both\n"
      "    on the CPU this process runs on; 2 CPUs = one on each of two CPUs.\n"
      "  io=N: the daemon's io_threads.  get+release = two round trips (baseline 2x ping-pong).\n"
      "  put: Client::put of distinct keys (PutBegin, copy into staging, Seal: the daemon\n"
      "    copies + checksums into the host tier); nothing evicted; baseline memcpy.\n"
      "  lease reads: a block already leased, summed as 64-bit words (read-sum) or copied\n"
      "    out; reads cycle through 128-512 MiB of blocks so they come from DRAM; the\n"
      "    baselines cycle through %zu MiB of private memory likewise.\n"
      "    first touch: page-table entries dropped (MADV_DONTNEED) before each read.\n"
      "  Redis GET: synchronous hiredis GET over loopback TCP + read-sum of the reply.\n",
      kLookupBytes, pool >> 20);
  if (quick) std::printf("  --quick: a few iterations, small pools: a smoke run, not figures.\n");
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) {
  bool quick = false, use_redis = true;
  uint32_t busy_poll_us = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--no-redis") {
      use_redis = false;
    } else if (a == "--busy-poll" && i + 1 < argc) {
      busy_poll_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--no-redis] [--busy-poll US]\n", argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  try {
    return kvtier::bench::run(quick, use_redis, busy_poll_us);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvtier_bench: %s\n", e.what());
    return 1;
  }
}
