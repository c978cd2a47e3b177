#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <thread>

#include <xxhash.h>

#include <fstream>
#include <iterator>

#include "index/modality_index.h"
#include "index/semantic_index.h"

namespace fs = std::filesystem;
using namespace kvtier;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("kvtier-index-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static inline int counter = 0;
};

BlockKey key_of(uint64_t i) {
  return BlockKey{i, i * 31 + 7};
}

std::vector<float> random_vec(std::mt19937& rng, size_t dim) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> v(dim);
  for (auto& x : v) x = n(rng);
  return v;
}

std::vector<float> normed(std::vector<float> v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  for (auto& x : v) x = float(x / std::sqrt(s));
  return v;
}

float dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return float(s);
}

// Clustered data: `clusters` Gaussian centres, points at noise `sigma` around them.
std::vector<std::vector<float>> clustered(std::mt19937& rng, size_t n, size_t dim, size_t clusters,
                                          float sigma) {
  std::vector<std::vector<float>> centres;
  for (size_t c = 0; c < clusters; ++c) centres.push_back(normed(random_vec(rng, dim)));
  std::normal_distribution<float> noise(0, sigma);
  std::uniform_int_distribution<size_t> pick(0, clusters - 1);
  std::vector<std::vector<float>> out(n);
  for (auto& v : out) {
    v = centres[pick(rng)];
    for (auto& x : v) x += noise(rng);
  }
  return out;
}

std::unique_ptr<SemanticIndex> open_index(const fs::path& dir, uint64_t exact_max = 50000) {
  IndexOptions o;
  o.dir = dir;
  o.exact_max_vectors = exact_max;
  auto r = SemanticIndex::open(o);
  REQUIRE(r.is_ok());
  return std::move(r.value());
}

// Brute-force top-k keys (by cosine) over data[i] <-> key_of(i).
std::vector<BlockKey> brute_topk(const std::vector<std::vector<float>>& data,
                                 const std::vector<float>& q, size_t k) {
  auto nq = normed(q);
  std::vector<std::pair<float, uint64_t>> s;
  for (size_t i = 0; i < data.size(); ++i) s.push_back({dot(normed(data[i]), nq), i});
  std::partial_sort(s.begin(), s.begin() + k, s.end(),
                    [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<BlockKey> out;
  for (size_t i = 0; i < k; ++i) out.push_back(key_of(s[i].second));
  return out;
}

std::vector<BlockKey> keys(const std::vector<IndexHit>& hits) {
  std::vector<BlockKey> out;
  for (auto& h : hits) out.push_back(h.key);
  return out;
}

const auto kAll = [](const BlockKey&) { return true; };

}  // namespace

TEST_CASE("exact index: top-k identical to brute force") {
  TempDir d;
  auto idx = open_index(d.path);
  std::mt19937 rng(1);
  const size_t n = 2000, dim = 64, k = 10;
  std::vector<std::vector<float>> data;
  for (size_t i = 0; i < n; ++i) {
    data.push_back(random_vec(rng, dim));
    REQUIRE(idx->add("ns", key_of(i), {{"vision", data.back()}}).is_ok());
  }
  REQUIRE(idx->info("ns", "vision")->type == "IDMap2,Flat");
  for (int t = 0; t < 20; ++t) {
    auto q = random_vec(rng, dim);
    auto r = idx->search("ns", {{"vision", q, -1.f, 1.f}}, k, kAll);
    REQUIRE(r.is_ok());
    REQUIRE(keys(*r) == brute_topk(data, q, k));
    for (auto& h : *r) {
      REQUIRE(h.similarities.size() == 1);
      REQUIRE(h.similarities[0].first == "vision");
      REQUIRE(h.score == Approx(h.similarities[0].second).margin(1e-6));
    }
  }
}

TEST_CASE("multi-modality: thresholds exclude, weights rank") {
  TempDir d;
  auto idx = open_index(d.path);
  // Two chunks: A is close on vision, far on prompt; B the opposite.
  std::vector<float> v1 = {1, 0, 0, 0}, v2 = {0.8f, 0.6f, 0, 0};
  std::vector<float> p1 = {0, 0, 1}, p2 = {0, 0.6f, 0.8f};
  REQUIRE(idx->add("ns", key_of(1), {{"vision", v1}, {"prompt", p2}}).is_ok());
  REQUIRE(idx->add("ns", key_of(2), {{"vision", v2}, {"prompt", p1}}).is_ok());
  REQUIRE(
      idx->add("ns", key_of(3), {{"vision", v1}}).is_ok());  // no prompt vector: never matches both

  // cos: A vision 1.0 prompt 0.8; B vision 0.8 prompt 1.0.
  auto both = [&](float tv, float wv, float tp, float wp) {
    auto r = idx->search("ns", {{"vision", v1, tv, wv}, {"prompt", p1, tp, wp}}, 5, kAll);
    REQUIRE(r.is_ok());
    return *r;
  };
  auto r = both(0.9f, 1, 0.f, 1);
  REQUIRE(keys(r) == std::vector<BlockKey>{key_of(1)});
  REQUIRE(r[0].similarities.size() == 2);
  REQUIRE(r[0].similarities[0].second == Approx(1.0f));
  REQUIRE(r[0].similarities[1].second == Approx(0.8f));
  REQUIRE(r[0].score == Approx(0.9f));
  REQUIRE(keys(both(0.f, 1, 0.9f, 1)) == std::vector<BlockKey>{key_of(2)});
  REQUIRE(both(0.99f, 1, 0.99f, 1).empty());
  // Weights rank: vision-heavy puts A first, prompt-heavy puts B first.
  REQUIRE(keys(both(0, 3, 0, 1)) == std::vector<BlockKey>{key_of(1), key_of(2)});
  REQUIRE(keys(both(0, 1, 0, 3)) == std::vector<BlockKey>{key_of(2), key_of(1)});
  auto w = both(0, 1, 0, 3);
  REQUIRE(w[0].score == Approx((0.8f + 3 * 1.0f) / 4));
  // Vision alone also finds chunk 3.
  auto v = idx->search("ns", {{"vision", v1, 0.99f, 1}}, 5, kAll);
  REQUIRE(v.is_ok());
  REQUIRE(v->size() == 2);
}

TEST_CASE("remove, replace and the alive filter") {
  TempDir d;
  auto idx = open_index(d.path);
  std::vector<float> a = {1, 0, 0}, b = {0, 1, 0};
  REQUIRE(idx->add("ns", key_of(1), {{"vision", a}, {"prompt", a}}).is_ok());
  REQUIRE(idx->add("ns", key_of(2), {{"vision", a}}).is_ok());
  idx->remove("ns", key_of(1));
  idx->remove("ns", key_of(99));  // absent: fine
  idx->remove("other", key_of(1));
  auto r = idx->search("ns", {{"vision", a}}, 5, kAll);
  REQUIRE(keys(*r) == std::vector<BlockKey>{key_of(2)});
  REQUIRE(idx->info("ns", "prompt")->live == 0);

  // Replace: chunk 2's vision vector moves to b.
  REQUIRE(idx->add("ns", key_of(2), {{"vision", b}}).is_ok());
  r = idx->search("ns", {{"vision", b, 0.99f}}, 5, kAll);
  REQUIRE(keys(*r) == std::vector<BlockKey>{key_of(2)});
  REQUIRE(idx->search("ns", {{"vision", a, 0.5f}}, 5, kAll)->empty());

  // Alive: chunk 3 is reported gone, dropped from the result and from the index.
  REQUIRE(idx->add("ns", key_of(3), {{"vision", b}}).is_ok());
  int calls = 0;
  r = idx->search("ns", {{"vision", b}}, 5, [&](const BlockKey& k) {
    ++calls;
    return k != key_of(3);
  });
  REQUIRE(keys(*r) == std::vector<BlockKey>{key_of(2)});
  REQUIRE(calls == 2);
  REQUIRE(idx->info("ns", "vision")->live == 1);
  calls = 0;
  r = idx->search("ns", {{"vision", b}}, 5, [&](const BlockKey&) { return ++calls, true; });
  REQUIRE(calls == 1);
  auto st = idx->stats();
  REQUIRE(st["namespaces"]["ns"]["vision"]["searches"].get<uint64_t>() >= 4);
  REQUIRE(st["namespaces"]["ns"]["vision"]["vectors"].get<uint64_t>() == 1);
}

TEST_CASE("a full candidate list thinned by alive() or by tombstones is fetched again") {
  // FAISS is asked for exactly k; chunks rejected after it answered must not shorten the
  // result while the index holds more that match.
  TempDir d;
  IndexOptions o;
  o.dir = d.path;
  o.rebuild_dead_ratio = 0.95;  // keep the tombstones in the FAISS index
  auto idx = SemanticIndex::open(o).value();
  // Chunk i at angle i degrees from the query: the nearest first by key.
  auto at = [](double deg) {
    const double r = deg * 3.14159265358979 / 180;
    return std::vector<float>{float(std::cos(r)), float(std::sin(r)), 0};
  };
  for (uint64_t i = 1; i <= 100; ++i)
    REQUIRE(idx->add("ns", key_of(i), {{"vision", at(i * 0.5)}}).is_ok());
  const std::vector<float> q = at(0);
  auto keys_from = [](uint64_t first, uint64_t n) {
    std::vector<BlockKey> out;
    for (uint64_t i = first; i < first + n; ++i) out.push_back(key_of(i));
    return out;
  };

  // alive() rejects the 30 nearest: the next 5 come back, and the 30 leave the index.
  int calls = 0;
  auto r = idx->search("ns", {{"vision", q}}, 5, [&](const BlockKey& k) {
    ++calls;
    return k.lo > 30;
  });
  REQUIRE(r.is_ok());
  REQUIRE(keys(*r) == keys_from(31, 5));
  REQUIRE(calls == 35);  // each rejected chunk asked once, across the rounds
  REQUIRE(idx->info("ns", "vision")->live == 70);

  // Tombstones bunched next to the query (removed, not yet purged): still the 5 nearest live.
  for (uint64_t i = 31; i <= 70; ++i) idx->remove("ns", key_of(i));
  REQUIRE(idx->info("ns", "vision")->dead == 70);
  r = idx->search("ns", {{"vision", q}}, 5, kAll);
  REQUIRE(keys(*r) == keys_from(71, 5));
  // A threshold stops the search where the cosines fall below it.
  r = idx->search("ns", {{"vision", q, float(std::cos(36.2 * 3.14159265358979 / 180))}}, 5, kAll);
  REQUIRE(keys(*r) == keys_from(71, 2));
  // Fewer live chunks than k: all of them.
  for (uint64_t i = 71; i <= 97; ++i) idx->remove("ns", key_of(i));
  r = idx->search("ns", {{"vision", q}}, 5, kAll);
  REQUIRE(keys(*r) == keys_from(98, 3));
}

TEST_CASE("errors: dimension, unknown modality, NaN, zero vector") {
  TempDir d;
  auto idx = open_index(d.path);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  REQUIRE(idx->add("ns", key_of(1), {{"vision", {1, 2, 3}}}).is_ok());
  auto bad = [](const Status& s) { return s.code() == Errc::kInvalidArgument; };
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {1, 2}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {1, nan, 3}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {1, inf, 3}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {0, 0, 0}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"", {1}}})));
  REQUIRE(bad(idx->add("ns", key_of(2), {{"vision", {1, 2, 3}}, {"vision", {1, 2, 3}}})));
  // All or nothing: a good prompt vector next to a bad vision one adds nothing.
  REQUIRE(bad(idx->add("ns", key_of(2), {{"prompt", {1, 2}}, {"vision", {1, 2}}})));
  REQUIRE(!idx->info("ns", "prompt"));
  // The same modality name may have another dimension in another namespace.
  REQUIRE(idx->add("ns2", key_of(2), {{"vision", {1, 2}}}).is_ok());

  auto sbad = [&](std::vector<ModalityQuery> q) {
    auto r = idx->search("ns", q, 3, kAll);
    return !r.is_ok() && r.status().code() == Errc::kInvalidArgument;
  };
  REQUIRE(sbad({{"vision", {1, 2}}}));
  REQUIRE(sbad({{"prompt", {1, 2, 3}}}));
  REQUIRE(sbad({{"vision", {1, nan, 3}}}));
  REQUIRE(sbad({{"vision", {0, 0, 0}}}));
  REQUIRE(sbad({}));
  REQUIRE(sbad({{"vision", {1, 2, 3}, 0, -1}}));
  REQUIRE(sbad({{"vision", {1, 2, 3}, 0, 0}}));
  REQUIRE(sbad({{"vision", {1, 2, 3}}, {"vision", {1, 2, 3}}}));
  REQUIRE(!idx->search("nope", {{"vision", {1, 2, 3}}}, 3, kAll).is_ok());
  auto msg = idx->search("ns", {{"vision", {1, 2}}}, 3, kAll).status().message();
  REQUIRE(msg.find("dimension 3") != std::string::npos);
  REQUIRE(idx->search("ns", {{"vision", {1, 2, 3}}}, 0, kAll)->empty());
}

TEST_CASE("ids are reused once purged: searches map each id to its current chunk") {
  TempDir d;
  std::mt19937 rng(11);
  const size_t dim = 16;
  for (uint64_t exact_max : {uint64_t(50000), uint64_t(1000)}) {  // exact, then IVF
    fs::remove_all(d.path);
    const size_t n = exact_max == 1000 ? 3000 : 400;
    std::map<uint64_t, std::vector<float>> live;
    std::vector<std::pair<uint64_t, std::vector<float>>> gone;
    auto idx = open_index(d.path, exact_max);
    for (uint64_t i = 0; i < n; ++i) {
      live[i] = random_vec(rng, dim);
      REQUIRE(idx->add("ns", key_of(i), {{"vision", live[i]}}).is_ok());
    }
    // Half removed (purges run as tombstones pass 25 %; for IVF some removes land while the
    // exact -> IVF rebuild runs, whose swap frees the tombstones it leaves behind), then as
    // many new chunks added.
    for (uint64_t i = 0; i < n / 2; ++i) {
      idx->remove("ns", key_of(i));
      gone.emplace_back(i, live[i]);
      live.erase(i);
    }
    idx->wait_for_rebuilds();
    for (uint64_t i = n; i < n + n / 2; ++i) {
      live[i] = random_vec(rng, dim);
      REQUIRE(idx->add("ns", key_of(i), {{"vision", live[i]}}).is_ok());
    }
    idx->wait_for_rebuilds();
    auto check = [&](SemanticIndex& x) {
      const ModalityIndexInfo info = *x.info("ns", "vision");
      REQUIRE(info.live == n);
      REQUIRE(info.id_slots >= info.live + info.dead);
      REQUIRE(info.id_slots < n + n / 2);  // without reuse: n + n / 2 ids
      // Exact: a live vector's top-1 is its own chunk.  IVF,SQ8 does not promise that: a
      // vector added after training whose residual falls outside the quantizer's trained range
      // is clamped (seen: own chunk scored 0.909, a neighbour at true cosine 0.918 scored 0.920;
      // SQ8 score errors up to 0.18 at dim 16), and the training set is whichever snapshot the
      // rebuild took, so it varies with timing.  There the own chunk must be among the top 10:
      // an id mapped to the wrong chunk loses it (its vector answers under another key).
      const bool exact = info.nlist == 0;
      for (const auto& [i, v] : live) {
        auto r = x.search("ns", {{"vision", v}}, exact ? 1 : 10, kAll);
        REQUIRE(r.is_ok());
        const std::vector<BlockKey> got = keys(*r);
        if (exact) REQUIRE(got == std::vector<BlockKey>{key_of(i)});
        REQUIRE(std::count(got.begin(), got.end(), key_of(i)) == 1);
        for (const BlockKey& k : got) REQUIRE((live.count(k.lo) == 1 && k == key_of(k.lo)));
      }
      for (const auto& [i, v] : gone) {
        auto r = x.search("ns", {{"vision", v}}, 5, kAll);
        REQUIRE(r.is_ok());
        for (const auto& h : *r) REQUIRE(h.key != key_of(i));
      }
    };
    check(*idx);
    const uint64_t slots = idx->info("ns", "vision")->id_slots;
    REQUIRE(idx->save().is_ok());
    idx.reset();
    idx = open_index(d.path, exact_max);
    const ModalityIndexInfo loaded = *idx->info("ns", "vision");
    REQUIRE(loaded.id_slots == slots);
    const uint64_t free_at_load = slots - loaded.live - loaded.dead;
    check(*idx);
    // Removed then re-added after the reopen: the free ids found at load are taken again.
    for (uint64_t i = n; i < n + n / 4; ++i) {
      idx->remove("ns", key_of(i));
      live[i] = random_vec(rng, dim);
      REQUIRE(idx->add("ns", key_of(i), {{"vision", live[i]}}).is_ok());
    }
    idx->wait_for_rebuilds();
    check(*idx);
    REQUIRE(idx->info("ns", "vision")->id_slots <= slots + (n / 4 - std::min(n / 4, free_at_load)));
  }
}

TEST_CASE("a file whose id table is inconsistent is refused as corrupt") {
  TempDir d;
  {
    auto idx = open_index(d.path);
    for (uint64_t i = 0; i < 3; ++i)
      REQUIRE(idx->add("ns", key_of(i), {{"vision", {float(i) + 1, 1, 0}}}).is_ok());
    REQUIRE(idx->save().is_ok());
  }
  fs::path file;
  for (const auto& e : fs::recursive_directory_iterator(d.path))
    if (e.path().extension() == ".kvidx") file = e.path();
  REQUIRE(!file.empty());
  std::string good;
  {
    std::ifstream in(file, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Header: magic 8, version 4, kind 4, dim 4, nlist 4, next_id 8 (offset 24), trained_n 8,
  // nkeys 8, ndead 8, faiss_bytes 8, then the id rows (offset 64): {id, key.lo, key.hi}.
  auto write_with = [&](size_t at, uint64_t value) {
    std::string bytes = good;
    std::memcpy(bytes.data() + at, &value, 8);
    const uint64_t sum = XXH3_64bits(bytes.data(), bytes.size() - 8);
    std::memcpy(bytes.data() + bytes.size() - 8, &sum, 8);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  };
  auto refused = [&](const std::string& why) {
    IndexOptions o;
    o.dir = d.path;
    auto r = SemanticIndex::open(o);
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Errc::kCorrupt);
    CHECK_THAT(r.status().message(), Catch::Contains(why));
  };
  write_with(24, 2);  // next_id below the 3 live ids
  refused("bad next id");
  write_with(24, uint64_t{1} << 40);  // an id table of 24 TiB
  refused("bad next id");
  write_with(64, 1);  // the first row's id (0) made equal to the second's
  refused("repeated id");
  write_with(64, 7);  // an id past next_id (3)
  refused("bad or repeated id");
  write_with(24, 3);  // the file as written: accepted
  IndexOptions o;
  o.dir = d.path;
  auto ok = SemanticIndex::open(o);
  REQUIRE(ok.is_ok());
  CHECK((*ok)->info("ns", "vision")->live == 3);
}

// Fuzz finding 13 (fuzz/crashes/index/sparse-list-named-twice): an IVF file whose sparse list
// table names list 12 twice (sizes 30 + 30 = the header's 60 vectors).  FAISS keeps the last
// size only, so the index loaded with 30 vectors in its lists and 60 in its count, and its own
// serialisation was refused on reload.  Such a file is refused when it is opened.
TEST_CASE("index file: a sparse list table that names a list twice is refused") {
  std::ifstream in(KVTIER_SOURCE_DIR "/fuzz/crashes/index/sparse-list-named-twice",
                   std::ios::binary);
  REQUIRE(in);
  std::string file(std::istreambuf_iterator<char>(in), {});
  const uint64_t sum = XXH3_64bits(file.data(), file.size());
  file.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  auto r = index_detail::ModalityIndex::deserialize(file);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == Errc::kCorrupt);
  CHECK_THAT(r.status().message(), Catch::Contains("FAISS part of an unexpected shape"));
}

TEST_CASE("persistence: same results after close and reopen") {
  TempDir d;
  std::mt19937 rng(2);
  std::vector<std::vector<float>> queries;
  std::vector<std::vector<IndexHit>> before;
  const size_t dim = 32;
  for (uint64_t exact_max : {uint64_t(50000), uint64_t(1000)}) {  // exact, then IVF
    fs::remove_all(d.path);
    queries.clear();
    before.clear();
    {
      auto idx = open_index(d.path, exact_max);
      auto data = clustered(rng, 3000, dim, 30, 0.3f);
      for (size_t i = 0; i < data.size(); ++i)
        REQUIRE(idx->add("tenant/a", key_of(i),
                         {{"vision", data[i]}, {"prompt", {float(i % 7) + 1, 1}}})
                    .is_ok());
      idx->remove("tenant/a", key_of(5));
      idx->wait_for_rebuilds();  // the IVF is built in the background
      for (int t = 0; t < 10; ++t) {
        queries.push_back(random_vec(rng, dim));
        before.push_back(*idx->search(
            "tenant/a", {{"vision", queries.back()}, {"prompt", {1, 1}, 0, 0.5f}}, 5, kAll));
      }
      REQUIRE(idx->save().is_ok());
      REQUIRE(idx->save().is_ok());  // nothing dirty: no-op
    }
    auto idx = open_index(d.path, exact_max);
    REQUIRE(idx->info("tenant/a", "vision")->type.substr(0, 3) ==
            (exact_max == 1000 ? "IVF" : "IDM"));
    REQUIRE(idx->info("tenant/a", "vision")->live == 2999);
    for (size_t t = 0; t < queries.size(); ++t) {
      auto r =
          idx->search("tenant/a", {{"vision", queries[t]}, {"prompt", {1, 1}, 0, 0.5f}}, 5, kAll);
      REQUIRE(r.is_ok());
      REQUIRE(keys(*r) == keys(before[t]));
      for (size_t i = 0; i < r->size(); ++i) REQUIRE((*r)[i].score == before[t][i].score);
    }
    // A corrupted file is refused with kCorrupt.
    for (auto& e : fs::recursive_directory_iterator(d.path))
      if (e.path().extension() == ".kvidx") {
        fs::resize_file(e.path(), fs::file_size(e.path()) - 3);
      }
    IndexOptions o;
    o.dir = d.path;
    auto bad = SemanticIndex::open(o);
    REQUIRE(!bad.is_ok());
    REQUIRE(bad.status().code() == Errc::kCorrupt);
  }
}

TEST_CASE("exact -> IVF switch, recall on clustered data, rebuild after removals") {
  TempDir d;
  std::mt19937 rng(3);
  const size_t dim = 64, exact_max = 4000, n = 5000;
  auto idx = open_index(d.path, exact_max);
  auto data = clustered(rng, n, dim, 50, 0.25f);
  std::vector<BlockKey> ks;
  std::vector<float> flat;
  for (size_t i = 0; i < exact_max; ++i) {
    ks.push_back(key_of(i));
    flat.insert(flat.end(), data[i].begin(), data[i].end());
  }
  REQUIRE(idx->add_batch("ns", "vision", ks, flat).is_ok());
  REQUIRE(idx->info("ns", "vision")->type == "IDMap2,Flat");
  for (size_t i = exact_max; i < n; ++i)
    REQUIRE(idx->add("ns", key_of(i), {{"vision", data[i]}}).is_ok());
  auto info = idx->info("ns", "vision");
  REQUIRE(info->type.rfind("IVF", 0) == 0);
  REQUIRE(info->live == n);

  // Queries near the data (like real lookups): recall@1 against brute force.
  std::normal_distribution<float> noise(0, 0.05f);
  int hit = 0;
  const int nq = 200;
  for (int t = 0; t < nq; ++t) {
    auto q = data[rng() % n];
    for (auto& x : q) x += noise(rng);
    auto r = idx->search("ns", {{"vision", q}}, 1, kAll);
    REQUIRE(r.is_ok());
    REQUIRE(r->size() == 1);
    hit += (*r)[0].key == brute_topk(data, q, 1)[0];
  }
  INFO("recall@1 " << double(hit) / nq);
  REQUIRE(double(hit) / nq >= 0.95);

  Result<std::vector<IndexHit>> r1 = std::vector<IndexHit>{};
  // Many removals: tombstones, then a purge past rebuild_dead_ratio; below exact_max/2 the
  // index goes back to exact.
  for (size_t i = 0; i < 1000; ++i) idx->remove("ns", key_of(i));
  REQUIRE(idx->info("ns", "vision")->dead == 1000);  // tombstones, below 0.25 of 5000
  for (size_t i = 1000; i < 1500; ++i) idx->remove("ns", key_of(i));
  info = idx->info("ns", "vision");
  REQUIRE(info->live == 3500);
  REQUIRE(info->dead < 1000);  // purged once past 1250
  REQUIRE(info->type.rfind("IVF", 0) == 0);
  r1 = idx->search("ns", {{"vision", data[4000]}}, 1, kAll);
  REQUIRE((*r1)[0].key == key_of(4000));
  for (size_t i = 1500; i < 3100; ++i) idx->remove("ns", key_of(i));
  info = idx->info("ns", "vision");
  REQUIRE(info->type == "IDMap2,Flat");  // below exact_max / 2
  REQUIRE(info->live == 1900);
  REQUIRE(info->dead < 200);  // the removals after the rebuild are tombstones again
  auto q = data[4321];
  auto r = idx->search("ns", {{"vision", q}}, 1, kAll);
  REQUIRE((*r)[0].key == key_of(4321));
  REQUIRE((*r)[0].score == Approx(1.0f).margin(0.01));
}

TEST_CASE("concurrent searches while adding") {
  TempDir d;
  auto idx = open_index(d.path, 1500);
  std::mt19937 rng(4);
  const size_t dim = 16;
  for (size_t i = 0; i < 500; ++i)
    REQUIRE(idx->add("ns", key_of(i), {{"vision", random_vec(rng, dim)}}).is_ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, searches{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&, t] {
      std::mt19937 r(100 + t);
      while (!stop.load()) {
        auto res = idx->search("ns", {{"vision", random_vec(r, dim), 0.f}}, 5, kAll);
        if (!res.is_ok() || res->size() > 5)
          ++bad;
        else
          for (size_t i = 0; i < res->size(); ++i)
            if ((*res)[i].score < 0 || (*res)[i].score > 1.001f ||
                (i && (*res)[i].score > (*res)[i - 1].score))
              ++bad;
        ++searches;
      }
    });
  for (size_t i = 500; i < 2500; ++i) {  // crosses exact_max: IVF built while readers run
    REQUIRE(idx->add("ns", key_of(i), {{"vision", random_vec(rng, dim)}}).is_ok());
    if (i % 3 == 0) idx->remove("ns", key_of(i - 100));
    if (i % 500 == 0) REQUIRE(idx->save().is_ok());
  }
  stop = true;
  for (auto& th : readers) th.join();
  REQUIRE(bad == 0);
  REQUIRE(searches > 0);
  REQUIRE(idx->info("ns", "vision")->type.rfind("IVF", 0) == 0);
}

namespace {

// Blocks the rebuild thread in the test hook until released.
struct HookGate {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, released = false;
  void enter() {
    std::unique_lock l(mu);
    entered = true;
    cv.notify_all();
    cv.wait(l, [&] { return released; });
  }
  bool wait_entered() {
    std::unique_lock l(mu);
    return cv.wait_for(l, std::chrono::seconds(60), [&] { return entered; });
  }
  void release() {
    std::lock_guard l(mu);
    released = true;
    cv.notify_all();
  }
};

}  // namespace

TEST_CASE("background rebuild: searches served meanwhile, adds and removes replayed") {
  TempDir d;
  const size_t dim = 32, exact_max = 2000;
  auto idx = open_index(d.path, exact_max);
  std::mt19937 rng(11);
  std::map<uint64_t, std::vector<float>> live;  // key index -> vector
  std::vector<BlockKey> ks;
  std::vector<float> flat;
  for (uint64_t i = 0; i < exact_max; ++i) {
    live[i] = random_vec(rng, dim);
    ks.push_back(key_of(i));
    flat.insert(flat.end(), live[i].begin(), live[i].end());
  }
  REQUIRE(idx->add_batch("ns", "vision", ks, flat).is_ok());
  REQUIRE(idx->stats()["namespaces"]["ns"]["vision"]["type"] == "IDMap2,Flat");

  HookGate gate;
  idx->set_rebuild_hook([&] { gate.enter(); });
  live[exact_max] = random_vec(rng, dim);  // crosses exact_max: the IVF build starts
  REQUIRE(idx->add("ns", key_of(exact_max), {{"vision", live[exact_max]}}).is_ok());
  REQUIRE(gate.wait_entered());

  // The rebuild is in flight (built, blocked before the swap): the exact index answers.
  auto st = idx->stats();
  REQUIRE(st["rebuilding"] == true);
  REQUIRE(st["namespaces"]["ns"]["vision"]["rebuilding"] == true);
  REQUIRE(st["namespaces"]["ns"]["vision"]["type"] == "IDMap2,Flat");
  auto brute = [&](const std::vector<float>& q, size_t k) {
    std::vector<std::pair<float, uint64_t>> s;
    auto nq = normed(q);
    for (auto& [i, v] : live) s.push_back({dot(normed(v), nq), i});
    std::partial_sort(s.begin(), s.begin() + k, s.end(),
                      [](auto& a, auto& b) { return a.first > b.first; });
    std::vector<BlockKey> out;
    for (size_t j = 0; j < k; ++j) out.push_back(key_of(s[j].second));
    return out;
  };
  for (int t = 0; t < 20; ++t) {
    auto q = random_vec(rng, dim);
    auto r = idx->search("ns", {{"vision", q}}, 5, kAll);
    REQUIRE(r.is_ok());
    REQUIRE(keys(*r) == brute(q, 5));
  }
  REQUIRE(idx->stats()["rebuilding"] == true);

  // Updates while it is in flight: new chunks (one batch big enough for a catch-up round),
  // removals of old and new chunks, replacements.
  ks.clear();
  flat.clear();
  for (uint64_t i = 10000; i < 11500; ++i) {
    live[i] = random_vec(rng, dim);
    ks.push_back(key_of(i));
    flat.insert(flat.end(), live[i].begin(), live[i].end());
  }
  REQUIRE(idx->add_batch("ns", "vision", ks, flat).is_ok());
  for (uint64_t i = 20000; i < 20100; ++i) {
    live[i] = random_vec(rng, dim);
    REQUIRE(idx->add("ns", key_of(i), {{"vision", live[i]}}).is_ok());
  }
  std::vector<std::pair<uint64_t, std::vector<float>>> gone;
  for (uint64_t i : {uint64_t(3), uint64_t(500), uint64_t(1999), uint64_t(10007), uint64_t(11499),
                     uint64_t(20050)}) {
    gone.push_back({i, live[i]});
    live.erase(i);
    idx->remove("ns", key_of(i));
  }
  std::vector<std::pair<uint64_t, std::vector<float>>> replaced_old;
  for (uint64_t i : {uint64_t(7), uint64_t(10010), uint64_t(20060)}) {
    replaced_old.push_back({i, live[i]});
    live[i] = random_vec(rng, dim);
    REQUIRE(idx->add("ns", key_of(i), {{"vision", live[i]}}).is_ok());
  }
  REQUIRE(idx->stats()["rebuilding"] == true);
  REQUIRE(idx->stats()["namespaces"]["ns"]["vision"]["type"] == "IDMap2,Flat");

  gate.release();
  idx->wait_for_rebuilds();
  st = idx->stats()["namespaces"]["ns"]["vision"];
  REQUIRE(idx->stats()["rebuilding"] == false);
  REQUIRE(st["rebuilding"] == false);
  REQUIRE(st["rebuilds"] == 1);
  REQUIRE(st["last_rebuild_ms"].get<double>() > 0);
  REQUIRE(st["type"].get<std::string>().rfind("IVF", 0) == 0);
  REQUIRE(st["vectors"] == live.size());

  // Every live chunk is found by its own vector; removed ones never come back.
  for (auto& [i, v] : live) {
    auto r = idx->search("ns", {{"vision", v}}, 1, kAll);
    REQUIRE(r.is_ok());
    REQUIRE(r->size() == 1);
    REQUIRE((*r)[0].key == key_of(i));
    REQUIRE((*r)[0].score > 0.7f);  // SQ8 error on isotropic 32-d data
  }
  for (auto& [i, v] : gone) {
    auto r = idx->search("ns", {{"vision", v}}, 10, kAll);
    REQUIRE(r.is_ok());
    for (auto& h : *r) REQUIRE(h.key != key_of(i));
  }
  for (auto& [i, v] : replaced_old) {  // the old vector is gone: its new one is random
    auto r = idx->search("ns", {{"vision", v}}, 1, kAll);
    REQUIRE(r.is_ok());
    REQUIRE((r->empty() || (*r)[0].key != key_of(i)));
  }
  // And the state persists.
  REQUIRE(idx->save().is_ok());
  idx.reset();
  idx = open_index(d.path, exact_max);
  REQUIRE(idx->info("ns", "vision")->live == live.size());
  REQUIRE(idx->info("ns", "vision")->dead == 0);
}

TEST_CASE("background rebuild: save while in flight, destruction while in flight") {
  TempDir d;
  const size_t dim = 32, exact_max = 1000;
  std::mt19937 rng(12);
  std::vector<BlockKey> ks;
  std::vector<float> flat;
  for (uint64_t i = 0; i < 1500; ++i) {
    auto v = random_vec(rng, dim);
    ks.push_back(key_of(i));
    flat.insert(flat.end(), v.begin(), v.end());
  }
  {
    // Blocked in the hook: save() writes the old (exact) index with its tombstones; the
    // destructor waits for the hook, then drops the rebuild.
    auto idx = open_index(d.path, exact_max);
    std::atomic<bool> entered{false};
    idx->set_rebuild_hook([&] {
      entered = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    });
    REQUIRE(idx->add_batch("ns", "vision", ks, flat).is_ok());
    while (!entered) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    idx->remove("ns", key_of(1));
    REQUIRE(idx->stats()["rebuilding"] == true);
    REQUIRE(idx->save().is_ok());
  }
  {
    // Reopened: the saved exact index holds more than exact_max: rebuilt in the background.
    auto idx = open_index(d.path, exact_max);
    auto info = idx->info("ns", "vision");
    REQUIRE(info->live == 1499);
    REQUIRE(info->type.rfind("IVF", 0) == 0);
  }
  for (int t = 0; t < 3; ++t) {
    // Destroyed at once: while the snapshot is taken or the IVF trained.
    fs::remove_all(d.path);
    auto idx = open_index(d.path, exact_max);
    REQUIRE(idx->add_batch("ns", "vision", ks, flat).is_ok());
    if (t == 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (t == 2) REQUIRE(idx->search("ns", {{"vision", random_vec(rng, dim)}}, 3, kAll).is_ok());
  }
}
