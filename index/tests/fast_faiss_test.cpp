// The SIMD kernels against the portable ones, and FlatIP / IvfSq8 against the stock FAISS
// types they speed up (same answers up to float summation order; same files).
#include <catch2/catch.hpp>

#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>
#include <faiss/utils/random.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "index/fast_faiss.h"
#include "index/simd_dot.h"

using namespace kvtier::index_detail;
using idx_t = faiss::Index::idx_t;

namespace {

std::vector<float> randn(size_t n, int64_t seed) {
  std::vector<float> v(n);
  faiss::float_randn(v.data(), n, seed);
  return v;
}

// Unit vectors around `clusters` centres (the shape of real embeddings).
std::vector<float> clustered(size_t n, size_t d, size_t clusters, int64_t seed) {
  auto c = randn(clusters * d, seed);
  auto x = randn(n * d, seed + 1);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < d; ++j) x[i * d + j] = c[(i % clusters) * d + j] + 0.5f * x[i * d + j];
  faiss::fvec_renorm_L2(d, n, x.data());
  return x;
}

std::unique_ptr<faiss::Index> round_trip(const faiss::Index& idx) {
  faiss::VectorIOWriter w;
  faiss::write_index(&idx, &w);
  faiss::VectorIOReader r;
  r.data = w.data;
  return std::unique_ptr<faiss::Index>(faiss::read_index(&r));
}

}  // namespace

TEST_CASE("dot kernels: every available set matches the scalar one") {
  auto sets = available_dot_kernels();
  REQUIRE(std::string(sets.back().name) == "scalar");
  REQUIRE(std::string(dot_kernels().name) == sets.front().name);
  const DotKernels& ref = sets.back();
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  for (const DotKernels& k : sets) {
    INFO("kernels " << k.name);
    for (size_t d : {1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 384u, 512u, 1000u}) {
      for (size_t n : {0u, 1u, 3u, 4u, 5u, 9u, 300u}) {
        INFO("d " << d << " n " << n);
        auto q = randn(d, int64_t(d * 7 + n));
        auto x = randn(n * d + 1, int64_t(d * 11 + n));  // +1: no row reads past the end
        std::vector<uint8_t> c(n * d);
        for (auto& b : c) b = uint8_t(byte(rng));
        std::vector<float> got(n + 1, -7.f), want(n + 1, -7.f);
        k.f32(q.data(), x.data(), n, d, got.data());
        ref.f32(q.data(), x.data(), n, d, want.data());
        for (size_t i = 0; i < n; ++i)
          REQUIRE(got[i] == Approx(want[i]).margin(1e-4 * std::sqrt(double(d))));
        REQUIRE(got[n] == -7.f);  // writes exactly n results
        k.u8(q.data(), c.data(), n, d, got.data());
        ref.u8(q.data(), c.data(), n, d, want.data());
        for (size_t i = 0; i < n; ++i)
          REQUIRE(got[i] == Approx(want[i]).epsilon(1e-4).margin(1e-2 * std::sqrt(double(d))));
        REQUIRE(got[n] == -7.f);
      }
    }
  }
}

TEST_CASE("FlatIP: the answers of IndexFlatIP, one query and batches") {
  const size_t d = 48, n = 3000, nq = 40, k = 7;
  auto x = randn(n * d, 3), q = randn(nq * d, 4);
  faiss::IndexFlatIP stock(d);
  FlatIP fast(d);
  stock.add(n, x.data());
  fast.add(n, x.data());
  for (size_t batch : {size_t(1), size_t(FlatIP::kSmallBatch), nq}) {  // nq: the BLAS path
    std::vector<float> ds(batch * k), df(batch * k);
    std::vector<idx_t> ls(batch * k), lf(batch * k);
    stock.search(batch, q.data(), k, ds.data(), ls.data());
    fast.search(batch, q.data(), k, df.data(), lf.data());
    for (size_t i = 0; i < batch * k; ++i) {
      REQUIRE(df[i] == Approx(ds[i]).margin(1e-4));
      if (i % k + 1 < k) REQUIRE(df[i] >= df[i + 1]);  // best first
    }
    REQUIRE(lf == ls);
  }
  // k past ntotal: the missing results are -1, as FAISS leaves them.
  FlatIP small(d);
  small.add(3, x.data());
  std::vector<float> dist(5);
  std::vector<idx_t> lab(5);
  small.search(1, q.data(), 5, dist.data(), lab.data());
  REQUIRE(lab[3] == -1);
  REQUIRE(lab[4] == -1);
  REQUIRE(lab[0] >= 0);
}

TEST_CASE("IvfSq8: the answers of FAISS's own SQ8 scanner, and the same file") {
  const size_t d = 64, n = 6000, nlist = 40, nq = 50, k = 10;
  auto x = clustered(n, d, 60, 5);
  auto q = clustered(nq, d, 60, 5);  // near the data, like real lookups
  IvfSq8 fast(d, nlist);
  fast.train(n, x.data());
  fast.add(n, x.data());
  // The stock FAISS type over the same trained index and lists: the file format is shared.
  auto stock = round_trip(fast);
  REQUIRE(dynamic_cast<faiss::IndexIVFScalarQuantizer*>(stock.get()) != nullptr);
  REQUIRE(dynamic_cast<IvfSq8*>(stock.get()) == nullptr);
  auto adopted = adopt(round_trip(fast));
  REQUIRE(dynamic_cast<IvfSq8*>(adopted.get()) != nullptr);
  REQUIRE(dynamic_cast<FlatIP*>(dynamic_cast<faiss::IndexIVF*>(adopted.get())->quantizer));
  REQUIRE(adopted->ntotal == idx_t(n));
  // Decoding on the calling thread gives FAISS's own reconstruction.
  auto* stock_ivf = dynamic_cast<faiss::IndexIVF*>(stock.get());
  std::vector<float> rs(d), rf(d);
  for (size_t list : {size_t(0), nlist / 2, nlist - 1})
    for (size_t off = 0; off < std::min<size_t>(3, stock_ivf->get_list_size(list)); ++off) {
      stock_ivf->reconstruct_from_offset(idx_t(list), idx_t(off), rs.data());
      fast.reconstruct_from_offset(idx_t(list), idx_t(off), rf.data());
      for (size_t j = 0; j < d; ++j) REQUIRE(rf[j] == Approx(rs[j]).margin(1e-6));
    }

  for (size_t nprobe : {1u, 4u, 40u}) {
    faiss::SearchParametersIVF p;
    p.nprobe = nprobe;
    std::vector<float> ds(nq * k), df(nq * k), da(nq * k);
    std::vector<idx_t> ls(nq * k), lf(nq * k), la(nq * k);
    stock->search(nq, q.data(), k, ds.data(), ls.data(), &p);
    for (size_t i = 0; i < nq; ++i) {  // one query at a time: the FlatIP fast path
      fast.search(1, &q[i * d], k, &df[i * k], &lf[i * k], &p);
      adopted->search(1, &q[i * d], k, &da[i * k], &la[i * k], &p);
    }
    REQUIRE(la == lf);
    size_t same = 0;
    for (size_t i = 0; i < nq * k; ++i) {
      REQUIRE(df[i] == Approx(ds[i]).margin(1e-4));
      REQUIRE(da[i] == df[i]);
      same += lf[i] == ls[i];
    }
    // Labels may only differ where two distances tie within float rounding.
    REQUIRE(same >= nq * k - 2);
  }
}

TEST_CASE("adopt: the exact index over FlatIP, other types unchanged") {
  const size_t d = 16, n = 200;
  auto x = randn(n * d, 9);
  faiss::IndexIDMap2 stock(new faiss::IndexFlatIP(d));
  stock.own_fields = true;
  std::vector<idx_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = idx_t(1000 + 3 * i);
  stock.add_with_ids(n, x.data(), ids.data());
  auto adopted = adopt(round_trip(stock));
  auto* map = dynamic_cast<faiss::IndexIDMap2*>(adopted.get());
  REQUIRE(map != nullptr);
  REQUIRE(dynamic_cast<FlatIP*>(map->index) != nullptr);
  std::vector<float> d1(5), d2(5);
  std::vector<idx_t> l1(5), l2(5);
  stock.search(1, x.data(), 5, d1.data(), l1.data());
  adopted->search(1, x.data(), 5, d2.data(), l2.data());
  REQUIRE(l1 == l2);
  REQUIRE(l2[0] == 1000);
  std::vector<float> r(d);
  adopted->reconstruct(1003, r.data());
  REQUIRE(r[0] == x[d]);

  auto other = std::make_unique<faiss::IndexFlatL2>(d);
  faiss::Index* raw = other.get();
  REQUIRE(adopt(std::move(other)).get() == raw);
}
