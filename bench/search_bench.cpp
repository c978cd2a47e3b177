// Semantic search through kvtierd (issue 6): p50/p99 of Client::search at 10k, 100k and 1M
// chunks with 512-d embeddings (clustered: a mixture of Gaussians; isotropic: N(0, I), the worst
// case for IVF), next to SemanticIndex::search and the bare faiss::Index::search on the same
// index in this process, plus the recall@1 of the daemon's answers against exact search.  A
// last column runs the same index as stock FAISS types (Debian's SSE2 build, without kvtier's
// kernels): what a process embedding FAISS itself would get.
//
// "The same index": the daemon persists its index every second here ([index] save_interval_s);
// once its file holds every vector, this process loads a copy of it, so both run the same
// FAISS structure (same training, same lists).  Each method runs its queries in a pass of its
// own (interleaving them per query would hand the later calls the caches the first one
// warmed), passes rotate, and the p50/p99 are over all passes.  The daemon runs in three
// placements, as in kvtier_bench: unpinned, this process and every daemon thread on one CPU,
// and on two CPUs (waking the other vCPU costs ~40 us each way in these VMs: see the ping-pong
// of each placement).  "index mean" is the mean SemanticIndex::search time inside the daemon
// (its stats) and in this process, timed the same way.
//
// The bare call here and the daemon's search run two copies of the index in two processes,
// and the same query on two copies differs by up to ~50 % from run to run on these VMs
// (docs/benchmarks.md, "Fourth session").  The paired column compares the daemon with itself: the
// client's mean latency over a pass against the mean time the FAISS calls of those same searches
// took inside the daemon (its `faiss_us_total` stat): what the daemon adds to the FAISS call it
// makes, transport and SemanticIndex included.
//
//   search_bench [--sizes 10000,100000,1000000] [--data clustered,isotropic] [--queries 200]
//                [--reps 3] [--busy-poll US] [--io-threads N] [--quick]
//
// --busy-poll US: the daemon's io threads and this client poll for US microseconds before
// sleeping (daemon.busy_poll_us, ClientOptions::busy_poll_us); the ping-pong baseline then
// polls the same way.  The daemon passes then run twice: through the shared-memory request
// channel a polling client opens, and through the socket (a second client that opens none);
// "channel mean / socket mean" compares the two in the same run.
#include <faiss/IndexIVF.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>
#include <thread>

#include "bench/bench_util.h"
#include "bench/embeddings.h"
#include "index/semantic_index.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::bench::now_ns;
namespace fs = std::filesystem;

namespace {

constexpr size_t kDim = bench::kEmbeddingDim;
constexpr size_t kK = 10;
constexpr size_t kBatch = 2000;  // chunks per add_embeddings request (4 MiB)
const std::string kNs = "bench/vision";

BlockKey key_of(uint64_t i) {
  return BlockKey{i + 1, 0x5ea5c4u};
}

// Where this process and the daemon's threads run during a daemon pass (bench_util.h): the
// scheduler's choice, both on this process's CPU, or one on each CPU.
constexpr bench::Placement kPlacements[] = {bench::Placement::kScheduler,
                                            bench::Placement::kSameCpu, bench::Placement::kTwoCpus};
constexpr int kNumPlacements = 3;
// With --busy-poll, the daemon passes run twice per placement: through the shared-memory
// request channel (ClientOptions::request_channel, the default for a polling client) and
// through the socket (a second client with request_channel = false), in the same run.
constexpr int kTransports = 2;  // 0: the channel, 1: the socket
constexpr int kDaemonMethods = kNumPlacements * kTransports;
const char* transport_name(int t) {
  return t == 0 ? "channel" : "socket";
}

struct Row {
  size_t n = 0;
  bool clustered = true;
  std::string type;
  double put_s = 0, embed_s = 0;  // loading the daemon: puts, then add_embeddings (+ IVF builds)
  // Per daemon method (placement + kNumPlacements * transport); n == 0: not run here.
  bench::Latency daemon[kDaemonMethods];
  double daemon_index_us[kDaemonMethods] = {};  // mean SemanticIndex::search inside the daemon
  double daemon_faiss_us[kDaemonMethods] = {};  // mean FAISS time per search inside the daemon
  bench::Latency index, bare, stock;
  double index_mean_us = 0;  // mean SemanticIndex::search in this process (same clock as above)
  double faiss_mean_us = 0;  // mean FAISS time per SemanticIndex::search in this process
  double recall1 = 0;
};

// SemanticIndex::search and FAISS time inside the daemon so far (its stats).
struct DaemonTime {
  double search_us = 0, faiss_us = 0;
  uint64_t searches = 0;
};
DaemonTime daemon_index_time(Client& c) {
  auto st = c.stats_json();
  if (!st) return {};
  const auto j = nlohmann::json::parse(*st)["index"]["namespaces"][kNs]["vision"];
  return {j["search_us_total"].get<double>(), j["faiss_us_total"].get<double>(),
          j["searches"].get<uint64_t>()};
}

// A copy of the daemon's persisted index once it holds all n vectors of kNs/"vision" and
// the daemon has no rebuild in flight and runs that same index type (a retraining still
// running in the daemon would compete for the CPUs while searches are timed, then swap in an
// index other than the copy).
std::unique_ptr<SemanticIndex> load_daemon_index(const testing::Daemon& d, Client& c, size_t n,
                                                 const fs::path& to) {
  const fs::path from = d.state_dir() / "index";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string daemon_type;
    if (auto st = c.stats_json(); st) {
      auto j = nlohmann::json::parse(*st)["index"];  // not const: [] of a missing key is null
      const auto& m = j["namespaces"][kNs]["vision"];
      if (j.is_object() && m.is_object() && !j.value("rebuilding", true) &&
          m.value("vectors", uint64_t{0}) == n)
        daemon_type = m.value("type", "");
    }
    if (!daemon_type.empty()) {
      fs::remove_all(to);
      std::error_code ec;
      for (const auto& e : fs::recursive_directory_iterator(from, ec)) {
        if (!e.is_regular_file() || e.path().extension() != ".kvidx") continue;
        const fs::path dst = to / fs::relative(e.path(), from);
        fs::create_directories(dst.parent_path());
        fs::copy_file(e.path(), dst, ec);  // renamed into place whole: never a partial file
      }
      IndexOptions o;
      o.dir = to;
      if (auto idx = SemanticIndex::open(o); idx.is_ok()) {
        auto info = (*idx)->info(kNs, "vision");
        if (info && info->live == n && info->type == daemon_type) return std::move(idx).value();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  throw std::runtime_error("the daemon did not persist its index in 10 minutes");
}

// daemon.busy_poll_us and ClientOptions::busy_poll_us of the run (--busy-poll).
uint32_t g_busy_poll_us = 0;
uint32_t g_io_threads = 2;  // daemon.io_threads

Row run(size_t n, bool clustered, size_t nq, int reps) {
  std::fprintf(stderr, "search_bench: %zu chunks, %s...\n", n,
               clustered ? "clustered" : "isotropic");
  Row row;
  row.n = n;
  row.clustered = clustered;
  auto data = bench::make_embeddings(n, clustered, 42 + n);
  faiss::fvec_renorm_L2(kDim, n, data.data());
  const auto queries = bench::make_embedding_queries(data, nq, clustered);

  // Exact answers for recall.
  std::vector<float> td(nq);
  std::vector<faiss::Index::idx_t> truth(nq);
  {
    faiss::float_minheap_array_t heap{nq, 1, truth.data(), td.data()};
    faiss::knn_inner_product(queries.data(), data.data(), kDim, nq, n, &heap);
  }

  // The daemon: n one-byte chunks (blocks stay tiny: ~1 KiB of arena each), then their
  // embeddings in batches.
  testing::DaemonOptions o;
  o.host_bytes = std::max<uint64_t>(256ull << 20, n * 1024);
  o.disk = false;
  o.max_message_bytes = 16ull << 20;
  o.busy_poll_us = g_busy_poll_us;
  o.io_threads = g_io_threads;
  o.extra_toml =
      "[index]\nsave_interval_s = 1\n"
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n";
  testing::Daemon daemon(o);
  // An add_embeddings request that crosses a retraining point waits for it (~20 s at 800k
  // vectors here, longer on a busy machine): more than the default 30 s request timeout.
  ClientOptions co;
  co.socket = daemon.socket();
  co.timeout_ms = 600000;
  co.busy_poll_us = g_busy_poll_us;
  auto c = Client::connect(co).value();
  // The socket's client; without polling there is no channel and it is the only one timed.
  co.request_channel = false;
  auto cs = Client::connect(co).value();
  const bool channel = c->uses_request_channel();
  if (g_busy_poll_us > 0 && !channel)
    throw std::runtime_error("the daemon opened no request channel for a polling client");
  uint8_t byte = 1;
  std::vector<TensorIn> t = {TensorIn{"x", DType::kU8, {1}, &byte}};
  uint64_t t0 = now_ns();
  for (size_t i = 0; i < n; ++i)
    if (Status st = c->put(kNs, key_of(i), t); !st)
      throw std::runtime_error("put: " + st.to_string());
  row.put_s = double(now_ns() - t0) / 1e9;
  t0 = now_ns();
  for (size_t i = 0; i < n; i += kBatch) {
    std::vector<ChunkEmbeddings> batch;
    for (size_t j = i; j < std::min(n, i + kBatch); ++j)
      batch.push_back({key_of(j), {{"vision", {&data[j * kDim], &data[(j + 1) * kDim]}}}});
    if (Status st = c->add_embeddings(kNs, batch); !st)
      throw std::runtime_error("add_embeddings: " + st.to_string());
  }
  row.embed_s = double(now_ns() - t0) / 1e9;
  data = {};  // the daemon and the copy below hold the vectors from here on

  const fs::path dir =
      fs::temp_directory_path() /
      ("kvtier-search-bench-" + std::to_string(::getpid()) + "-" + std::to_string(n));
  auto index = load_daemon_index(daemon, *c, n, dir);
  const ModalityIndexInfo info = index->info(kNs, "vision").value();
  row.type = info.type + (info.nprobe ? ", nprobe " + std::to_string(info.nprobe) : "");
  // The same index as stock FAISS types (faiss::read_index of what kvtier writes): what an
  // inference process embedding Debian's FAISS build would run, without kvtier's kernels.
  std::unique_ptr<faiss::Index> stock;
  {
    faiss::VectorIOWriter w;
    faiss::write_index(info.index, &w);
    faiss::VectorIOReader r;
    r.data = std::move(w.data);
    stock.reset(faiss::read_index(&r));
  }

  // Requests built up front: each timed call is the call alone.
  std::vector<std::vector<SearchQuery>> dq(nq);
  std::vector<std::vector<ModalityQuery>> iq(nq);
  for (size_t i = 0; i < nq; ++i) {
    std::vector<float> q(&queries[i * kDim], &queries[(i + 1) * kDim]);
    dq[i] = {{"vision", q}};
    iq[i] = {{"vision", q}};
  }
  std::vector<float> bd(kK);
  std::vector<faiss::Index::idx_t> bl(kK);
  faiss::SearchParametersIVF params;
  params.nprobe = info.nprobe;
  size_t correct = 0;
  // Methods 0..5: the daemon in each placement, through the channel then the socket;
  // 6: SemanticIndex; 7: the bare FAISS call; 8: the same call on stock FAISS types.
  constexpr int kMethods = kDaemonMethods + 3, kIndex = kDaemonMethods, kBare = kIndex + 1,
                kStock = kBare + 1;
  auto one = [&](int method, size_t i) {
    if (method < kDaemonMethods) {
      Client& via = method < kNumPlacements ? *c : *cs;
      auto r = via.search(kNs, dq[i], kK);
      if (!r) throw std::runtime_error("search: " + r.status().to_string());
      return !r->hits.empty() && r->hits[0].key == key_of(uint64_t(truth[i]));
    }
    if (method == kIndex) {
      bench::do_not_optimize(index->search(kNs, iq[i], kK, SemanticIndex::AliveBatch()));
    } else {
      const faiss::Index* idx = method == kBare ? info.index : stock.get();
      idx->search(1, &queries[i * kDim], kK, bd.data(), bl.data(), info.nprobe ? &params : nullptr);
      bench::do_not_optimize(bl[0]);
    }
    return false;
  };
  // The in-process calls run on one OpenMP thread, as the daemon runs them (IndexIDMap2::search
  // opens a parallel region for its label translation even for one query).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const cpu_set_t all_cpus = bench::get_affinity(daemon.pid());
  std::vector<uint64_t> ns[kMethods];
  DaemonTime in_daemon[kDaemonMethods];
  // Without a channel both clients use the socket: the second transport is not run.
  auto skipped = [&](int m) { return !channel && m >= kNumPlacements && m < kDaemonMethods; };
  for (int m = 0; m < kMethods; ++m)  // warm-up: page faults, first touches
    for (size_t i = 0; i < std::min<size_t>(nq, 20); ++i)
      if (!skipped(m)) one(m, i);
  for (int r = 0; r < reps; ++r)
    for (int j = 0; j < kMethods; ++j) {
      const int m = (r + j) % kMethods;
      if (skipped(m)) continue;
      bench::AffinityGuard guard;
      std::optional<bench::CpuPair> cpus;
      DaemonTime before;
      if (m < kDaemonMethods) {
        cpus = bench::placement_cpus(kPlacements[m % kNumPlacements]);
        if (!cpus) continue;
        if (cpus->self >= 0) {
          bench::set_affinity(0, bench::single_cpu(cpus->self));
          bench::set_process_affinity(daemon.pid(), bench::single_cpu(cpus->peer));
        }
        before = daemon_index_time(*c);
      }
      for (size_t i = 0; i < nq; ++i) {
        const uint64_t a = now_ns();
        const bool hit = one(m, i);
        ns[m].push_back(now_ns() - a);
        if (m == 0 && r == 0) correct += hit;
      }
      if (m < kDaemonMethods) {
        const auto after = daemon_index_time(*c);
        in_daemon[m].search_us += after.search_us - before.search_us;
        in_daemon[m].faiss_us += after.faiss_us - before.faiss_us;
        in_daemon[m].searches += after.searches - before.searches;
        if (cpus->self >= 0) bench::set_process_affinity(daemon.pid(), all_cpus);
      }
    }
  omp_set_num_threads(threads);
  for (int m = 0; m < kDaemonMethods; ++m) {
    if (ns[m].empty()) continue;
    row.daemon[m] = bench::summarize(ns[m]);
    if (const double n = double(in_daemon[m].searches); n > 0) {
      row.daemon_index_us[m] = in_daemon[m].search_us / n;
      row.daemon_faiss_us[m] = in_daemon[m].faiss_us / n;
    }
  }
  {
    const auto st = index->stats()["namespaces"][kNs]["vision"];
    row.index_mean_us = st["search_us_mean"].get<double>();
    const auto searches = st["searches"].get<uint64_t>();
    row.faiss_mean_us = searches ? st["faiss_us_total"].get<double>() / double(searches) : 0.0;
  }
  row.index = bench::summarize(ns[kIndex]);
  row.bare = bench::summarize(ns[kBare]);
  row.stock = bench::summarize(ns[kStock]);
  row.recall1 = double(correct) / double(nq);
  index.reset();
  fs::remove_all(dir);
  return row;
}

// The SIMD kernels the index runs (SemanticIndex::stats).
std::string simd_kernels() {
  IndexOptions o;
  o.dir = fs::temp_directory_path() / ("kvtier-search-bench-probe-" + std::to_string(::getpid()));
  auto idx = SemanticIndex::open(o);
  std::string k = idx ? (*idx)->stats()["kernels"].get<std::string>() : "?";
  fs::remove_all(o.dir);
  return k;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) out.push_back(x);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // As kvtierd does (daemon/main.cpp): no spinning OpenMP workers in the in-process baselines.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
    ::execv("/proc/self/exe", argv);
  std::vector<size_t> sizes = {10000, 100000, 1000000};
  std::vector<bool> kinds = {true, false};
  size_t nq = 200;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      sizes = {2000};
      kinds = {true};
      nq = 20;
      reps = 1;
    } else if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      for (const auto& s : split(argv[++i])) sizes.push_back(std::stoul(s));
    } else if (a == "--data" && i + 1 < argc) {
      kinds.clear();
      for (const auto& s : split(argv[++i])) kinds.push_back(s == "clustered");
    } else if (a == "--queries" && i + 1 < argc) {
      nq = std::stoul(argv[++i]);
    } else if (a == "--io-threads" && i + 1 < argc) {
      g_io_threads = static_cast<uint32_t>(std::stoul(argv[++i]));
    } else if (a == "--busy-poll" && i + 1 < argc) {
      g_busy_poll_us = static_cast<uint32_t>(std::stoul(argv[++i]));
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::stoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: search_bench [--sizes N,N] [--data clustered,isotropic] "
                   "[--queries Q] [--reps R] [--busy-poll US] [--io-threads N] [--quick]\n");
      return 2;
    }
  }
  // The floor under the daemon's overhead: one round trip of a search-sized message, in the
  // same placements.
  std::optional<bench::Latency> ping[kNumPlacements];
  for (int p = 0; p < kNumPlacements; ++p)
    ping[p] = bench::socket_pingpong(5000, 2 * 1024 + 64, kPlacements[p], 500, g_busy_poll_us);
  std::printf(
      "semantic search, 512-d, k=%zu, %zu queries x %d passes per method (latency us), "
      "kernels %s, busy poll %u us\n",
      kK, nq, reps, simd_kernels().c_str(), g_busy_poll_us);
  std::printf(
      "| chunks | data | index | placement | transport | daemon p50 | daemon p99 | "
      "SemanticIndex p50 | bare FAISS p50 | bare p99 | daemon / bare | daemon - bare | "
      "daemon mean | in daemon: index / FAISS mean | daemon mean / its FAISS mean | "
      "channel mean / socket mean | here: index / FAISS mean | socket ping-pong p50 | recall@1 | "
      "stock FAISS p50 | daemon / stock | load s (puts + embeddings) |\n");
  std::printf(
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      "\n");
  std::fflush(stdout);
  for (size_t n : sizes)
    for (bool clustered : kinds) {
      Row r = run(n, clustered, nq, reps);
      for (int p = 0; p < kNumPlacements; ++p)
        for (int t = 0; t < kTransports; ++t) {
          const int m = p + kNumPlacements * t;
          if (r.daemon[m].n == 0 || !ping[p]) continue;  // not run (one CPU, no channel)
          const bench::Latency& d = r.daemon[m];
          const bench::Latency& sock = r.daemon[p + kNumPlacements];
          char vs_socket[32] = "";
          if (t == 0 && sock.n > 0)
            std::snprintf(vs_socket, sizeof(vs_socket), "%.2fx (%+.1f)", d.mean_us / sock.mean_us,
                          d.mean_us - sock.mean_us);
          std::printf(
              "| %zu | %s | %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.2fx | %+.0f | "
              "%.0f | %.0f / %.0f | %.2fx (%+.1f) | %s | %.0f / %.0f | %.1f | %.3f | %.0f | "
              "%.2fx | %.1f + %.1f |\n",
              r.n, r.clustered ? "clustered" : "isotropic", r.type.c_str(),
              bench::placement_name(kPlacements[p]), transport_name(t), d.p50_us, d.p99_us,
              r.index.p50_us, r.bare.p50_us, r.bare.p99_us,
              r.bare.p50_us > 0 ? d.p50_us / r.bare.p50_us : 0.0, d.p50_us - r.bare.p50_us,
              d.mean_us, r.daemon_index_us[m], r.daemon_faiss_us[m],
              r.daemon_faiss_us[m] > 0 ? d.mean_us / r.daemon_faiss_us[m] : 0.0,
              d.mean_us - r.daemon_faiss_us[m], vs_socket, r.index_mean_us, r.faiss_mean_us,
              ping[p]->p50_us, r.recall1, r.stock.p50_us,
              r.stock.p50_us > 0 ? d.p50_us / r.stock.p50_us : 0.0, r.put_s, r.embed_s);
        }
      std::fflush(stdout);
    }
  return 0;
}
