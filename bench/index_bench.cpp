// index_bench: SemanticIndex::search latency next to the bare FAISS call on the same index, and
// the recall of the approximate (IVF,SQ8) index against exact search, at 10k/100k/1M vectors of
// 512 dimensions, on clustered data (mixture of Gaussians, like real embeddings) and on
// isotropic random data (the worst case).  --quick: 10k only (CI); --exact-max N: the exact
// index's limit (IndexOptions::exact_max_vectors).  Figures in docs/index.md.
#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/utils/distances.h>
#include <faiss/utils/random.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "bench/embeddings.h"
#include "index/semantic_index.h"

using namespace kvtier;
using idx_t = faiss::Index::idx_t;

namespace {

constexpr size_t kDim = 512;

BlockKey key_of(uint64_t i) {
  return BlockKey{i, ~i};
}

// /proc/self/status "VmRSS" or "VmHWM" (peak) in MiB; 0 if unreadable.
double status_mib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so that it reports the peak from here on.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  return static_cast<bool>(out.flush());
}

void run(size_t n, bool clustered, size_t nq, uint64_t exact_max,
         const std::filesystem::path& dir) {
  const char* kind = clustered ? "clustered" : "isotropic";
  std::vector<float> data = bench::make_embeddings(n, clustered, 1234 + n);
  std::vector<BlockKey> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = key_of(i);
  std::filesystem::remove_all(dir);
  IndexOptions opts;
  opts.dir = dir;
  opts.exact_max_vectors = exact_max;
  auto idx = std::move(SemanticIndex::open(opts).value());
  uint64_t t0 = bench::now_ns();
  if (Status s = idx->add_batch("bench", "vision", keys, data); !s) {
    std::printf("add_batch: %s\n", s.to_string().c_str());
    return;
  }
  const double build_s = double(bench::now_ns() - t0) / 1e9;
  auto info = *idx->info("bench", "vision");

  // Exact ground truth over the normalised data.
  faiss::fvec_renorm_L2(kDim, n, data.data());
  std::vector<float> q = bench::make_embedding_queries(data, nq, clustered);
  const size_t k = 10;
  std::vector<float> gd(nq * k);
  std::vector<idx_t> gi(nq * k);
  faiss::float_minheap_array_t heap{nq, k, gi.data(), gd.data()};
  faiss::knn_inner_product(q.data(), data.data(), kDim, nq, n, &heap);
  data.clear();
  data.shrink_to_fit();
  // Searches run on one OpenMP thread, as SemanticIndex runs them (IndexIDMap2::search opens a
  // parallel region for its label translation even for one query).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);

  // Each method runs the queries in a pass of its own (per-query interleaving would hand the
  // second call the lists the first one brought into the caches); passes alternate.
  std::vector<uint64_t> bare_ns, sem_ns;
  size_t r1 = 0, r10 = 0;
  std::vector<float> d(k);
  std::vector<idx_t> l(k);
  faiss::SearchParametersIVF params;
  params.nprobe = info.nprobe;
  auto alive = [](const BlockKey&) { return true; };
  std::vector<std::vector<ModalityQuery>> mq(nq);
  for (size_t i = 0; i < nq; ++i)
    mq[i] = {{"vision", std::vector<float>(&q[i * kDim], &q[(i + 1) * kDim])}};
  for (int rep = 0; rep < 4; ++rep) {
    if (rep % 2 == 0) {
      for (size_t i = 0; i < nq; ++i) {
        uint64_t a = bench::now_ns();
        info.index->search(1, &q[i * kDim], k, d.data(), l.data(), info.nlist ? &params : nullptr);
        bare_ns.push_back(bench::now_ns() - a);
      }
    }
    for (size_t i = 0; i < nq; ++i) {
      uint64_t a = bench::now_ns();
      auto hits = idx->search("bench", mq[i], k, alive);
      sem_ns.push_back(bench::now_ns() - a);
      if (rep > 0) continue;
      if (!hits->empty() && (*hits)[0].key == key_of(uint64_t(gi[i * k]))) ++r1;
      for (size_t j = 0; j < k; ++j)
        for (const auto& h : *hits)
          if (h.key == key_of(uint64_t(gi[i * k + j]))) ++r10;
    }
    if (rep % 2 == 1) {
      for (size_t i = 0; i < nq; ++i) {
        uint64_t a = bench::now_ns();
        info.index->search(1, &q[i * kDim], k, d.data(), l.data(), info.nlist ? &params : nullptr);
        bare_ns.push_back(bench::now_ns() - a);
      }
    }
  }
  auto bl = bench::summarize(bare_ns), sl = bench::summarize(sem_ns);
  std::printf(
      "| %7zu | %-9s | %-14s | %6u | %8.1f | %8.3f | %8.3f | %8.3f | %8.3f | %+5.0f%% | %5.3f | "
      "%5.3f |\n",
      n, kind, info.type.c_str(), info.nprobe, build_s, bl.p50_us / 1e3, bl.p99_us / 1e3,
      sl.p50_us / 1e3, sl.p99_us / 1e3, 100.0 * (sl.p50_us / bl.p50_us - 1), double(r1) / nq,
      double(r10) / double(nq * k));

  // nprobe sweep on the same IVF (the measurement behind choose_nprobe).
  if (info.nlist) {
    std::printf("|         |           |   sweep nprobe:");
    for (uint32_t np : {1u, 2u, 4u, 8u, 16u, 32u, 64u}) {
      params.nprobe = np;
      std::vector<uint64_t> ns;
      size_t hit = 0;
      for (size_t i = 0; i < nq; ++i) {
        uint64_t a = bench::now_ns();
        info.index->search(1, &q[i * kDim], k, d.data(), l.data(), &params);
        ns.push_back(bench::now_ns() - a);
        hit += l[0] == gi[i * k];
      }
      auto s = bench::summarize(ns);
      std::printf(" %u: r@1 %.3f p50 %.3f ms;", np, double(hit) / nq, s.p50_us / 1e3);
    }
    std::printf(" |\n");
  }
  // Searches while save() persists the index (its first save: every vector): the purge holds
  // the exclusive lock, serialising the shared one, writing none.  A search that waits for
  // the lock shows up in the max.
  {
    std::atomic<bool> saved{false};
    uint64_t save_ns = 0;
    const double rss_before = status_mib("VmRSS");
    const bool peak_ok = reset_peak_rss();
    std::thread saver([&] {
      const uint64_t a = bench::now_ns();
      if (Status st = idx->save(); !st) std::printf("save: %s\n", st.to_string().c_str());
      save_ns = bench::now_ns() - a;
      saved = true;
    });
    std::vector<uint64_t> during;
    for (size_t i = 0; !saved.load(); ++i) {
      const uint64_t a = bench::now_ns();
      bench::do_not_optimize(idx->search("bench", mq[i % nq], k, alive));
      during.push_back(bench::now_ns() - a);
    }
    saver.join();
    const double peak = peak_ok ? status_mib("VmHWM") - rss_before : -1;
    const auto dl = bench::summarize(during);
    std::printf(
        "|         |           |   during save(): %.0f ms, peak RSS +%.0f MiB; %zu searches, "
        "p50 %.3f p99 %.3f max %.3f ms (without a save: p50 %.3f max %.3f ms, max ratio "
        "%.1fx) |\n",
        double(save_ns) / 1e6, peak, dl.n, dl.p50_us / 1e3, dl.p99_us / 1e3, dl.max_us / 1e3,
        sl.p50_us / 1e3, sl.max_us / 1e3, sl.max_us > 0 ? dl.max_us / sl.max_us : 0.0);
  }
  omp_set_num_threads(threads);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  // As kvtierd does (daemon/main.cpp): idle OpenMP workers sleep instead of spinning.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
    ::execv("/proc/self/exe", argv);
  bool quick = false;
  uint64_t exact_max = IndexOptions{}.exact_max_vectors;
  std::vector<size_t> sizes = {10000, 100000, 1000000};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--exact-max") && i + 1 < argc)
      exact_max = std::stoull(argv[++i]);
    else if (!std::strcmp(argv[i], "--sizes") && i + 1 < argc) {
      sizes.clear();
      for (char* s = std::strtok(argv[++i], ","); s; s = std::strtok(nullptr, ","))
        sizes.push_back(std::stoul(s));
    }
  }
  if (quick) sizes = {10000};
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvtier-index-bench-" + std::to_string(::getpid()));
  {
    IndexOptions o;
    o.dir = dir;
    auto probe = SemanticIndex::open(o);
    std::printf(
        "index_bench: %zu-d, k=10, exact_max_vectors=%llu, kernels %s; latencies in ms per "
        "query, one thread\n",
        kDim, static_cast<unsigned long long>(exact_max),
        probe ? (*probe)->stats()["kernels"].get<std::string>().c_str() : "?");
  }
  std::printf(
      "| vectors | data      | index          | nprobe | build s  | bare p50 | bare p99 | sem p50  "
      "| sem p99  | +p50  | r@1   | r@10  |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t n : sizes)
    for (bool clustered : {true, false}) run(n, clustered, quick ? 100 : 300, exact_max, dir);
  std::filesystem::remove_all(dir);
  return 0;
}
