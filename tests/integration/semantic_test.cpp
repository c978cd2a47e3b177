// Issue 6 through the daemon: fusion state rides with its chunk; chunks are found by
// embedding similarity; both survive eviction to disk and a restart.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

DaemonOptions opts() {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  o.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"volatile/\"\ncodec = \"fp16\"\ndisk = \"off\"\n"
      "[[namespace]]\nprefix = \"durable/\"\ncodec = \"fp16\"\ndisk = \"persist\"\n";
  return o;
}

std::vector<float> random_unit(size_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n;
  std::vector<float> v(dim);
  double s = 0;
  for (auto& x : v) {
    x = n(rng);
    s += x * x;
  }
  for (auto& x : v) x /= std::sqrt(s);
  return v;
}

std::vector<float> perturb(std::vector<float> v, float eps, uint32_t seed) {
  auto noise = random_unit(v.size(), seed);
  for (size_t i = 0; i < v.size(); ++i) v[i] += eps * noise[i];
  return v;
}

struct Fusion {
  std::vector<uint16_t> out = std::vector<uint16_t>(8 * 64);
  std::vector<uint16_t> image = std::vector<uint16_t>(64);
  std::vector<TensorIn> tensors;
  explicit Fusion(uint16_t salt) {
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = static_cast<uint16_t>(0x3c00 + (i + salt) % 512);
    for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<uint16_t>(0x3800 + i + salt);
    tensors = {TensorIn{"fusion_output", DType::kF16, {8, 64}, out.data()},
               TensorIn{"image_features", DType::kF16, {1, 64}, image.data()}};
  }
  bool matches(const LeasedBlock& b) const {
    if (b.fusion.size() != 2) return false;
    for (const auto& t : b.fusion) {
      const auto& want = t.name == "fusion_output" ? out : image;
      if (t.bytes != want.size() * 2 || std::memcmp(t.data, want.data(), t.bytes) != 0)
        return false;
    }
    return true;
  }
};

BlockKey key_of(std::string_view ns, uint32_t i) {
  std::vector<uint32_t> tokens(16, i);
  return chain_keys(ns, tokens, 16)[0];
}

nlohmann::json stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value());
}

}  // namespace

TEST_CASE("fusion state is refused without its chunk and rides with it") {
  Daemon d(opts());
  auto c = Client::connect(d.socket()).value();
  const BlockKey k = key_of("m", 1);
  Fusion f(1);
  Status st = c->put_fusion("m", k, f.tensors, "{\"frame\": 1}");
  CHECK(st.code() == Errc::kNotFound);
  CHECK_THAT(st.message(), Catch::Contains("not cached"));

  KvBlock kv(k, 32);
  REQUIRE(c->put("m", k, kv.tensors).is_ok());
  REQUIRE(c->put_fusion("m", k, f.tensors, "{\"frame\": 1}").is_ok());
  {
    auto l = c->get_fusion("m", k).value();
    REQUIRE(l.size() == 1);
    CHECK(f.matches(l.block(0)));
    CHECK(l.block(0).fusion_metadata == "{\"frame\": 1}");
    CHECK(kvtier::testing::check_kv_block(l.block(0), 32));  // the KV tensors are intact
    auto g = c->get("m", std::span(&k, 1)).value();
    CHECK(g.block(0).tensors.size() == 2);
    CHECK(f.matches(g.block(0)));
  }
  // One round trip: lookup of a chain plus the last hit's fusion state.
  auto r = c->lookup_with_fusion("m", std::span(&k, 1)).value();
  CHECK(r.matched == 1);
  REQUIRE(r.fusion.size() == 1);
  CHECK(f.matches(r.fusion.block(0)));
  r.fusion.release().is_ok();

  // A second put_fusion replaces the first.
  Fusion f2(7);
  REQUIRE(c->put_fusion("m", k, f2.tensors).is_ok());
  auto l2 = c->get_fusion("m", k).value();
  CHECK(f2.matches(l2.block(0)));
  CHECK(l2.block(0).fusion_metadata.empty());
  CHECK(stats(*c)["tiers"]["host"]["fusion_bytes"].get<uint64_t>() >= (8 * 64 + 64) * 2);

  // A chunk without fusion state.
  const BlockKey k2 = key_of("m", 2);
  KvBlock kv2(k2, 32);
  REQUIRE(c->put("m", k2, kv2.tensors).is_ok());
  CHECK(c->get_fusion("m", k2).status().code() == Errc::kNotFound);
  auto no = c->lookup_with_fusion("m", std::span(&k2, 1)).value();
  CHECK(no.matched == 1);
  CHECK(no.fusion.size() == 0);
  CHECK(stats(*c)["leases"] == 1);  // only l2
}

TEST_CASE("fusion state is evicted with its chunk, and demoted and restored with it") {
  Daemon d(opts());
  auto c = Client::connect(d.socket()).value();
  Fusion f(3);
  const BlockKey gone = key_of("volatile/m", 1), kept = key_of("m", 1);
  for (auto [ns, k] : {std::pair{"volatile/m", gone}, std::pair{"m", kept}}) {
    KvBlock kv(k, 1024);
    REQUIRE(c->put(ns, k, kv.tensors).is_ok());
    REQUIRE(c->put_fusion(ns, k, f.tensors).is_ok());
  }
  // Push both out of the 16 MiB host tier.
  for (uint32_t i = 100; i < 140; ++i) {
    KvBlock kv(key_of("filler", i), 2048);
    REQUIRE(c->put("volatile/filler", key_of("filler", i), kv.tensors).is_ok());
  }
  CHECK(c->get_fusion("volatile/m", gone).status().code() == Errc::kNotFound);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  Result<Lease> l = c->get_fusion("m", kept);
  while (!l && std::chrono::steady_clock::now() < deadline) {  // the demotion may still be queued
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    l = c->get_fusion("m", kept);
  }
  REQUIRE(l.is_ok());
  CHECK(f.matches(l->block(0)));
  CHECK(kvtier::testing::check_kv_block(l->block(0), 1024));
  CHECK(stats(*c)["counters"]["promotions"].get<uint64_t>() >= 1);
}

TEST_CASE("semantic search: thresholds, weights, errors, removal with the chunk") {
  Daemon d(opts());
  auto c = Client::connect(d.socket()).value();
  std::vector<ChunkEmbeddings> entries;
  for (uint32_t i = 0; i < 50; ++i) {
    const BlockKey k = key_of("volatile/s", i);
    KvBlock kv(k, 8);
    REQUIRE(c->put("volatile/s", k, kv.tensors).is_ok());
    entries.push_back(
        {k, {{"vision", random_unit(512, i)}, {"prompt", random_unit(384, 1000 + i)}}});
  }
  REQUIRE(c->add_embeddings("volatile/s", entries).is_ok());
  // Not cached: refused.
  std::vector<ChunkEmbeddings> orphan = {{BlockKey{9, 9}, {{"vision", random_unit(512, 1)}}}};
  CHECK(c->add_embeddings("volatile/s", orphan).code() == Errc::kNotFound);

  // A perturbed frame finds its chunk, with both similarities reported.
  std::vector<SearchQuery> q = {{"vision", perturb(random_unit(512, 17), 0.3f, 5), 0.8f},
                                {"prompt", perturb(random_unit(384, 1017), 0.2f, 6), 0.8f}};
  auto r = c->search("volatile/s", q, 3).value();
  REQUIRE(!r.hits.empty());
  CHECK(r.hits[0].key == key_of("volatile/s", 17));
  REQUIRE(r.hits[0].similarities.size() == 2);
  CHECK(r.hits[0].similarities[0] > 0.9f);
  CHECK(r.hits.size() == 1);  // nothing else passes 0.8 on random data

  // One modality failing its threshold excludes the chunk.
  q[1].values = random_unit(384, 4242);
  CHECK(c->search("volatile/s", q, 3).value().hits.empty());

  // Errors.
  std::vector<SearchQuery> bad = {{"vision", std::vector<float>(100, 1.f)}};
  CHECK(c->search("volatile/s", bad, 3).status().code() == Errc::kInvalidArgument);
  bad = {{"audio", random_unit(512, 1)}};
  CHECK(c->search("volatile/s", bad, 3).status().code() == Errc::kInvalidArgument);
  bad = {{"vision", random_unit(512, 1)}};
  bad[0].values[3] = std::nanf("");
  CHECK(c->search("volatile/s", bad, 3).status().code() == Errc::kInvalidArgument);

  // Removal with the chunk: remove() drops it; eviction (disk = off) makes it unfindable.
  const BlockKey k17 = key_of("volatile/s", 17);
  REQUIRE(c->remove("volatile/s", std::span(&k17, 1)).is_ok());
  std::vector<SearchQuery> q17 = {{"vision", random_unit(512, 17), 0.9f}};
  CHECK(c->search("volatile/s", q17, 1).value().hits.empty());
  for (uint32_t i = 200; i < 240; ++i) {
    KvBlock kv(key_of("filler", i), 2048);
    REQUIRE(c->put("volatile/filler", key_of("filler", i), kv.tensors).is_ok());
  }
  std::vector<SearchQuery> q3 = {{"vision", random_unit(512, 3), 0.9f}};
  CHECK(c->search("volatile/s", q3, 1).value().hits.empty());
  auto idx = stats(*c)["index"];
  INFO(idx.dump());
  CHECK(stats(*c)["counters"]["searches"].get<uint64_t>() >= 4);
}

TEST_CASE("embeddings persist across a restart with their chunks") {
  Daemon d(opts());
  const BlockKey k = key_of("durable/p", 5);
  {
    auto c = Client::connect(d.socket()).value();
    KvBlock kv(k, 8);
    REQUIRE(c->put("durable/p", k, kv.tensors).is_ok());
    std::vector<ChunkEmbeddings> e = {{k, {{"vision", random_unit(512, 5)}}}};
    REQUIRE(c->add_embeddings("durable/p", e).is_ok());
  }
  d.restart();
  auto c = Client::connect(d.socket()).value();
  std::vector<SearchQuery> q = {{"vision", perturb(random_unit(512, 5), 0.2f, 9), 0.9f}};
  auto r = c->search("durable/p", q, 1).value();
  REQUIRE(r.hits.size() == 1);
  CHECK(r.hits[0].key == k);
}

TEST_CASE("requests are served while the index saves, on its own thread") {
  // One io thread: a save on it would hold every request for its whole duration (here a
  // 3 s delay the test hook puts in front of each periodic save).
  DaemonOptions o = opts();
  o.io_threads = 1;
  o.extra_toml += "[index]\nsave_interval_s = 1\n";
  o.test_build = true;  // kvtierd_test: the index save delay hook
  o.env = {{"KVTIER_TEST_INDEX_SAVE_DELAY_MS", "3000"}};
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  const BlockKey k = key_of("tenant/s", 1);
  KvBlock kv(k, 8);
  REQUIRE(c->put("tenant/s", k, kv.tensors).is_ok());
  std::vector<ChunkEmbeddings> e = {{k, {{"vision", random_unit(64, 1)}}}};
  REQUIRE(c->add_embeddings("tenant/s", e).is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the first save is under way
  REQUIRE(stats(*c)["index"]["saves"].get<uint64_t>() == 0);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SearchQuery> q = {{"vision", random_unit(64, 1), 0.99f}};
  auto r = c->search("tenant/s", q, 1).value();
  REQUIRE(c->lookup("tenant/s", std::vector<BlockKey>{k}).value() == 1);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1000));
  REQUIRE(r.hits.size() == 1);
  CHECK(r.hits[0].key == k);
  // ... and the save still happens.
  uint64_t saves = 0;
  for (int i = 0; i < 100 && saves == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    saves = stats(*c)["index"]["saves"].get<uint64_t>();
  }
  REQUIRE(saves >= 1);
  CHECK(stats(*c)["index"]["save_failures"].get<uint64_t>() == 0);
}

TEST_CASE("one process stores chunk, embeddings and fusion; another finds and reads all three") {
  Daemon d(opts());
  const BlockKey k = key_of("mm/vlm", 42);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto c = Client::connect(d.socket());
    if (!c) ::_exit(1);
    KvBlock kv(k, 64);
    Fusion f(42);
    std::vector<ChunkEmbeddings> e = {
        {k, {{"vision", random_unit(512, 42)}, {"prompt", random_unit(384, 4200)}}}};
    bool ok = (*c)->put("mm/vlm", k, kv.tensors).is_ok() &&
              (*c)->put_fusion("mm/vlm", k, f.tensors, "frame 42").is_ok() &&
              (*c)->add_embeddings("mm/vlm", e).is_ok();
    ::_exit(ok ? 0 : 2);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  auto c = Client::connect(d.socket()).value();
  std::vector<SearchQuery> q = {{"vision", perturb(random_unit(512, 42), 0.25f, 1), 0.85f},
                                {"prompt", perturb(random_unit(384, 4200), 0.1f, 2), 0.85f, 0.5f}};
  auto r = c->search("mm/vlm", q, 1, /*with_fusion=*/true).value();
  REQUIRE(r.hits.size() == 1);
  CHECK(r.hits[0].key == k);
  REQUIRE(r.fusion.size() == 1);
  const LeasedBlock& b = r.fusion.block(0);
  CHECK(kvtier::testing::check_kv_block(b, 64));  // the KV
  CHECK(Fusion(42).matches(b));                   // the fusion tensors
  CHECK(b.fusion_metadata == "frame 42");
}
