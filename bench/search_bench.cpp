// Semantic search through kvtierd (issue 6): p50/p99 of Client::search at 10k, 100k and 1M
// chunks with 512-d clustered embeddings, next to SemanticIndex::search and the bare FAISS call
// on an index built in this process from the same vectors with the same parameters, plus
// recall@1 of the daemon's answers against exact search.
//
//   search_bench [--sizes 10000,100000,1000000] [--queries 200] [--quick]
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/utils/distances.h>
#include <faiss/utils/random.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "bench/bench_util.h"
#include "bench/embeddings.h"
#include "index/semantic_index.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::bench::now_ns;

namespace {

constexpr size_t kDim = 512;
constexpr size_t kK = 10;

BlockKey key_of(uint64_t i) {
  return BlockKey{i + 1, 0x5ea5c4u};
}

struct Row {
  size_t n;
  std::string type;
  bench::Latency daemon, index, bare;
  double recall1;
};

Row run(size_t n, size_t nq) {
  std::fprintf(stderr, "search_bench: %zu chunks...\n", n);
  Row row;
  row.n = n;
  auto data = bench::make_embeddings(n, /*clustered=*/true, 42 + n);
  faiss::fvec_renorm_L2(kDim, n, data.data());
  auto queries = bench::make_embedding_queries(data, nq, /*clustered=*/true);

  // Exact answers for recall.
  faiss::IndexFlatIP exact(kDim);
  exact.add(n, data.data());
  std::vector<float> d(nq);
  std::vector<faiss::Index::idx_t> truth(nq);
  exact.search(nq, queries.data(), 1, d.data(), truth.data());

  // The daemon: n tiny chunks, then their embeddings in batches.
  testing::DaemonOptions o;
  o.host_bytes = std::max<uint64_t>(256ull << 20, n * 1024);
  o.disk = false;
  o.max_message_bytes = 16ull << 20;
  o.extra_toml = "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n";
  testing::Daemon daemon(o);
  auto c = Client::connect(daemon.socket()).value();
  uint8_t byte = 1;
  std::vector<TensorIn> t = {TensorIn{"x", DType::kU8, {1}, &byte}};
  const std::string ns = "bench/vision";
  for (size_t i = 0; i < n; ++i)
    if (!c->put(ns, key_of(i), t)) throw std::runtime_error("put failed");
  for (size_t i = 0; i < n; i += 2000) {
    std::vector<ChunkEmbeddings> batch;
    for (size_t j = i; j < std::min(n, i + 2000); ++j)
      batch.push_back({key_of(j), {{"vision", {&data[j * kDim], &data[(j + 1) * kDim]}}}});
    Status st = c->add_embeddings(ns, batch);
    if (!st) throw std::runtime_error("add_embeddings: " + st.to_string());
  }
  // The same index in this process, from the same vectors and parameters.
  auto dir = std::filesystem::temp_directory_path() / ("kvtier-search-bench-" + std::to_string(n));
  std::filesystem::remove_all(dir);
  IndexOptions io;
  io.dir = dir;
  auto index = SemanticIndex::open(io).value();
  std::vector<BlockKey> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = key_of(i);
  if (!index->add_batch(ns, "vision", keys, data)) throw std::runtime_error("add_batch failed");
  auto info = index->info(ns, "vision").value();
  row.type = info.type + (info.nprobe ? ", nprobe " + std::to_string(info.nprobe) : "");

  std::vector<uint64_t> td, ti, tb;
  size_t correct = 0;
  std::vector<float> bd(kK);
  std::vector<faiss::Index::idx_t> bl(kK);
  for (size_t i = 0; i < nq; ++i) {
    std::vector<float> q(&queries[i * kDim], &queries[(i + 1) * kDim]);
    std::vector<SearchQuery> sq = {{"vision", q}};
    uint64_t t0 = now_ns();
    auto r = c->search(ns, sq, kK);
    td.push_back(now_ns() - t0);
    if (r && !r->hits.empty() && r->hits[0].key == key_of(truth[i])) ++correct;
    std::vector<ModalityQuery> mq = {{"vision", q}};
    t0 = now_ns();
    auto h = index->search(ns, mq, kK, {});
    ti.push_back(now_ns() - t0);
    t0 = now_ns();
    if (info.nprobe) {
      faiss::SearchParametersIVF p;
      p.nprobe = info.nprobe;
      info.index->search(1, q.data(), kK, bd.data(), bl.data(), &p);
    } else {
      info.index->search(1, q.data(), kK, bd.data(), bl.data());
    }
    tb.push_back(now_ns() - t0);
  }
  row.daemon = bench::summarize(td);
  row.index = bench::summarize(ti);
  row.bare = bench::summarize(tb);
  row.recall1 = double(correct) / double(nq);
  std::filesystem::remove_all(dir);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  // As kvtierd does (daemon/main.cpp): no spinning OpenMP workers in the in-process baselines.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
    ::execv("/proc/self/exe", argv);
  std::vector<size_t> sizes = {10000, 100000, 1000000};
  size_t nq = 200;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      sizes = {2000};
      nq = 20;
    } else if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string s; std::getline(ss, s, ',');) sizes.push_back(std::stoul(s));
    } else if (a == "--queries" && i + 1 < argc) {
      nq = std::stoul(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: search_bench [--sizes N,N] [--queries Q] [--quick]\n");
      return 2;
    }
  }
  std::printf("semantic search, 512-d clustered embeddings, k=%zu, %zu queries (latency us)\n", kK,
              nq);
  std::printf(
      "| chunks | index | daemon p50 | daemon p99 | SemanticIndex p50 | bare FAISS p50 | bare p99 "
      "| daemon / bare | recall@1 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (size_t n : sizes) {
    Row r = run(n, nq);
    std::printf("| %zu | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.2fx | %.3f |\n", r.n,
                r.type.c_str(), r.daemon.p50_us, r.daemon.p99_us, r.index.p50_us, r.bare.p50_us,
                r.bare.p99_us, r.bare.p50_us > 0 ? r.daemon.p50_us / r.bare.p50_us : 0.0,
                r.recall1);
    std::fflush(stdout);
  }
  return 0;
}
