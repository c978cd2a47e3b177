// The engine in-process, without a daemon: the whole tier ladder (put, host hits, demotion to
// the disk tier on host eviction, promotion back, GPU placement and copy down, persist, remove)
// on an in-memory disk device and the GPU emulation, injected through Engine::open's hooks.
#include <catch2/catch.hpp>

#include <chrono>
#include <future>
#include <cmath>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <span>

#include "engine/engine.h"
#include "kernels/nf4.h"
#include "kernels/nf4_device.h"
#include "tests/testing/devices/fault_device.h"
#include "tests/testing/devices/memory_device.h"

using namespace kvtier;
using boost::asio::awaitable;

namespace {

constexpr uint64_t kBlock = 1 << 20;  // 1 MiB blocks: 16 fill the smallest host tier

template <typename T>
awaitable<void> store(awaitable<T> a, std::optional<T>* out) {
  *out = co_await std::move(a);
}

// Runs one engine coroutine to completion.  The io_context lives as long as the program, like
// the daemon's: a disk thread may still be letting go of a completion when run() returns.
template <typename T>
T run(awaitable<T> a) {
  static boost::asio::io_context io;
  io.restart();
  std::optional<T> out;
  boost::asio::co_spawn(io, store(std::move(a), &out), boost::asio::detached);
  io.run();
  REQUIRE(out.has_value());
  return std::move(*out);
}

BlockLayout f16_layout(uint64_t bytes) {
  BlockLayout l;
  TensorLayout t;
  t.name = "kv";
  t.dtype = DType::kF16;
  t.shape = {bytes / 2 / 64, 64};
  t.bytes = t.raw_bytes = bytes;
  l.tensors.push_back(t);
  l.total_bytes = bytes;
  return l;
}

std::vector<std::byte> pattern(const BlockKey& k, uint64_t bytes) {
  std::vector<std::byte> v(bytes);
  // Finite fp16 values only (0x3c00 = 1.0 with varying low bits).
  for (uint64_t i = 0; i < bytes; i += 2) {
    v[i] = std::byte((k.lo + i / 2) & 0xff);
    v[i + 1] = std::byte(0x3c);
  }
  return v;
}

struct Rig {
  explicit Rig(std::string extra = {}, EngineHooks hooks = {}, bool with_disk_memory = true) {
    spdlog::set_level(spdlog::level::warn);
    static std::atomic<int> n{0};
    tag = std::to_string(::getpid()) + "-" + std::to_string(n++);
    dir = std::filesystem::temp_directory_path() / ("kvtier-engine-" + tag);
    std::filesystem::create_directories(dir);
    config = config::parse("[daemon]\nstate_dir = \"" + dir.string() +
                           "\"\nshm_prefix = \"kvtier-engine-" + tag +
                           "\"\n[host]\nsize = \"16MiB\"\n"
                           "[disk]\nsize = \"64MiB\"\nregion_bytes = \"8MiB\"\n"
                           "[gpu]\nbackend = \"emulation\"\nsize = \"4MiB\"\n"
                           "[index]\nenabled = false\n[session]\nstaging_bytes = \"4MiB\"\n" +
                           extra +
                           "[[namespace]]\nprefix = \"durable/\"\ncodec = \"fp16\"\n"
                           "disk = \"persist\"\n"
                           "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n");
    if (with_disk_memory && !hooks.disk_device) {
      auto mem = make_memory_disk();
      hooks.disk_device = [mem](const DiskOptions&) -> Result<std::unique_ptr<Device>> {
        return make_memory_device(mem);
      };
    }
    engine = Engine::open(config, metrics, std::move(hooks));
    sid = engine->open_session(PeerInfo{});
  }
  ~Rig() {
    engine.reset();
    std::filesystem::remove_all(dir);
  }

  uint32_t ns(const std::string& name) { return engine->resolve_namespace(name, {}).value(); }

  // A whole put (begin, seal) of `key` with its pattern; returns the seal's result.
  Result<uint64_t> put(uint32_t ns, const BlockKey& key, int device = -1) {
    Engine::PutRequest req;
    req.ns = ns;
    req.key = key;
    req.client_layout = f16_layout(kBlock);
    req.device = device;
    auto id = run(engine->begin_put(sid, std::move(req)));
    if (!id) return id.status();
    const auto bytes = pattern(key, kBlock);
    return run(engine->seal(sid, *id, bytes));
  }

  // The bytes a lease points at, wherever they live (host arena or emulated GPU pool).
  std::vector<std::byte> bytes_of(const LeaseGrant& g) {
    const std::byte* p = nullptr;
    if (g.tier == TierKind::kGpu) {
      p = reinterpret_cast<const std::byte*>(engine->gpu_tier(g.device)->pool().base()) +
          g.extent.offset;
    } else {
      p = engine->host().data(g.extent);
    }
    return {p, p + g.layout.total_bytes()};
  }

  std::string tag;
  std::filesystem::path dir;
  config::Config config;
  Metrics metrics;
  std::unique_ptr<Engine> engine;
  uint64_t sid = 0;
};

BlockKey key(uint64_t i) {
  return BlockKey{i, 7};
}

}  // namespace

TEST_CASE("engine: a put lands in the host tier and a get leases its exact bytes") {
  Rig r;
  const uint32_t ns = r.ns("m");
  REQUIRE(r.put(ns, key(1)).value() == kBlock);
  auto found = run(r.engine->lookup(r.sid, ns, {key(1), key(2)}, false));
  CHECK(found.matched == 1);
  auto g = run(r.engine->get(r.sid, ns, {key(1), key(2)}));
  REQUIRE(g[0].code == Errc::kOk);
  CHECK(g[0].tier == TierKind::kHost);
  CHECK(r.bytes_of(g[0]) == pattern(key(1), kBlock));
  CHECK(g[1].code == Errc::kNotFound);
  CHECK(r.engine->release(r.sid, std::span(&g[0].lease_id, 1)) == 1);
}

TEST_CASE("engine: host eviction demotes to the disk tier and a get promotes the same bytes") {
  Rig r;
  const uint32_t ns = r.ns("m");
  constexpr int kBlocks = 40;  // 40 MiB through a 16 MiB host tier
  for (int i = 0; i < kBlocks; ++i) REQUIRE(r.put(ns, key(i), /*device=*/-1).is_ok());
  r.engine->disk()->flush();
  CHECK(r.metrics.demotions.load() > 0);
  // The first blocks left the host tier (and the GPU tier, which fp16 puts fill first), yet
  // every block is still cached, and each one read back is bit-exact.
  CHECK(run(r.engine->lookup(r.sid, ns, {key(0), key(1), key(2)}, false)).matched == 3);
  for (int i = 0; i < kBlocks; ++i) {
    auto g = run(r.engine->get(r.sid, ns, {key(i)}));
    REQUIRE(g[0].code == Errc::kOk);
    CHECK(r.bytes_of(g[0]) == pattern(key(i), kBlock));
    r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
  }
  CHECK(r.metrics.promotions.load() > 0);
}

TEST_CASE("engine: a GPU get promotes host blocks into the pool; GPU eviction copies down") {
  Rig r;
  const uint32_t ns = r.ns("m");
  // fp16 puts asked for the GPU land there until leased blocks fill it; 4 MiB pool.
  for (int i = 0; i < 8; ++i) REQUIRE(r.put(ns, key(i), 0).is_ok());
  CHECK(r.metrics.gpu_puts.load() == 8);
  CHECK(r.metrics.gpu_demotions.load() >= 4);  // the first ones were copied down to the host
  for (int i = 0; i < 8; ++i) {
    auto g = run(r.engine->get(r.sid, ns, {key(i)}, Placement{true, 0}));
    REQUIRE(g[0].code == Errc::kOk);
    CHECK(g[0].tier == TierKind::kGpu);
    CHECK(r.bytes_of(g[0]) == pattern(key(i), kBlock));
    r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
  }
  CHECK(r.metrics.gpu_promotions.load() > 0);
  // A host get of a block only the GPU holds copies it down.
  auto h = run(r.engine->get(r.sid, ns, {key(7)}));
  REQUIRE(h[0].code == Errc::kOk);
  CHECK(h[0].tier == TierKind::kHost);
  CHECK(r.bytes_of(h[0]) == pattern(key(7), kBlock));
}

// A GPU eviction's copy down to the host tier (a quantization on a real device) runs after the
// engine lock is released, by the thread whose reservation evicted the block, before that
// thread writes the freed place.  A remove while it runs keeps the block out of the host tier.
TEST_CASE("engine: GPU eviction copies down without the engine lock; a remove meanwhile wins") {
  Rig r;
  const uint32_t ns = r.ns("m");
  std::vector<NsKey> copied;
  bool lock_free = true;
  std::optional<BlockKey> removed;
  std::vector<uint32_t> removes;  // what each remove in the observer found in the tiers
  r.engine->set_copy_down_observer([&](std::span<const NsKey> ids) {
    copied.insert(copied.end(), ids.begin(), ids.end());
    // Another thread takes the engine lock while the copy is in flight.
    auto done = std::make_shared<std::promise<void>>();
    auto ready = done->get_future();
    std::thread([e = r.engine.get(), done] {
      (void)e->session_count();
      done->set_value();
    }).detach();
    if (ready.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      lock_free = false;
      return;
    }
    if (!removed) {  // the first victim is removed before its copy is published
      removed = ids.front().key;
      const auto c = r.engine->remove(ns, std::span(&*removed, 1));
      removes.push_back(c.removed + c.deferred);
    }
  });
  for (int i = 0; i < 8; ++i) REQUIRE(r.put(ns, key(i), 0).is_ok());
  REQUIRE(lock_free);
  REQUIRE(removed.has_value());
  const BlockKey evicted_and_removed = *removed;
  CHECK(removes == std::vector<uint32_t>{0});  // an evicted block is in no tier while copied
  CHECK(copied.size() >= 4);  // the first puts were evicted as the 4 MiB pool filled
  CHECK(r.metrics.gpu_demotions_unlocked.load() == copied.size());
  CHECK(r.metrics.gpu_demotions.load() == copied.size() - 1);
  CHECK(r.metrics.gpu_demotions_dropped.load() == 1);
  // The removed block is gone everywhere; every other victim is in the host tier, exact.
  auto gone = run(r.engine->get(r.sid, ns, {*removed}));
  CHECK(gone[0].code == Errc::kNotFound);
  for (const NsKey& id : copied) {
    if (id.key == *removed) continue;
    auto g = run(r.engine->get(r.sid, ns, {id.key}));
    REQUIRE(g[0].code == Errc::kOk);
    CHECK(g[0].tier == TierKind::kHost);
    CHECK(r.bytes_of(g[0]) == pattern(id.key, kBlock));
    r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
  }
  // A GPU get that promotes a host block evicts another GPU block: copied down the same way.
  const size_t before = copied.size();
  const BlockKey back = copied.back().key;
  auto p = run(r.engine->get(r.sid, ns, {back}, Placement{true, 0}));
  REQUIRE(p[0].code == Errc::kOk);
  CHECK(p[0].tier == TierKind::kGpu);
  CHECK(r.bytes_of(p[0]) == pattern(back, kBlock));
  r.engine->release(r.sid, std::span(&p[0].lease_id, 1));
  CHECK(copied.size() > before);
  auto h = run(r.engine->get(r.sid, ns, {copied[before].key}));
  REQUIRE(h[0].code == Errc::kOk);
  CHECK(h[0].tier == TierKind::kHost);
  CHECK(r.bytes_of(h[0]) == pattern(copied[before].key, kBlock));
  r.engine->release(r.sid, std::span(&h[0].lease_id, 1));

  // A host get of a block only the GPU holds copies it down the same way (the GPU block
  // leased meanwhile): exact bytes; a remove during that copy makes the get a miss.
  const uint64_t copy_downs = r.metrics.gpu_copy_downs.load();
  std::vector<BlockKey> gpu_only;
  for (int i = 4; i < 8; ++i)
    if (r.engine->gpu_tier(0)->find(NsKey{ns, key(i)}) != nullptr &&
        r.engine->host().find(NsKey{ns, key(i)}) == nullptr)
      gpu_only.push_back(key(i));
  REQUIRE(gpu_only.size() >= 2);
  auto c = run(r.engine->get(r.sid, ns, {gpu_only[0]}));
  REQUIRE(c[0].code == Errc::kOk);
  CHECK(c[0].tier == TierKind::kHost);
  CHECK(r.bytes_of(c[0]) == pattern(gpu_only[0], kBlock));
  r.engine->release(r.sid, std::span(&c[0].lease_id, 1));
  CHECK(r.metrics.gpu_copy_downs.load() == copy_downs + 1);
  removed.reset();
  auto m = run(r.engine->get(r.sid, ns, {gpu_only[1]}));
  REQUIRE(removed == gpu_only[1]);
  CHECK(removes.back() == 1);  // the GPU block, leased by the get: freed when it lets go
  CHECK(m[0].code == Errc::kNotFound);
  CHECK(r.engine->host().find(NsKey{ns, gpu_only[1]}) == nullptr);
  CHECK(r.engine->gpu_tier(0)->find(NsKey{ns, gpu_only[1]}) == nullptr);
  CHECK(r.metrics.gpu_copy_downs.load() == copy_downs + 1);
  REQUIRE(lock_free);

  // A get that lists a GPU-only key twice: one copy, two host leases of it.
  REQUIRE(gpu_only.size() >= 3);
  const BlockKey twice = gpu_only[2];
  removed = twice;  // the observer removes nothing more
  auto d = run(r.engine->get(r.sid, ns, {twice, evicted_and_removed, twice}));
  for (int i : {0, 2}) {
    REQUIRE(d[i].code == Errc::kOk);
    CHECK(d[i].tier == TierKind::kHost);
    CHECK(r.bytes_of(d[i]) == pattern(twice, kBlock));
    r.engine->release(r.sid, std::span(&d[i].lease_id, 1));
  }
  CHECK(d[1].code == Errc::kNotFound);  // removed in the eviction window above
  CHECK(r.metrics.gpu_copy_downs.load() == copy_downs + 2);
}

TEST_CASE("engine: a persist namespace's seal answers once the block is durable") {
  Rig r;
  const uint32_t ns = r.ns("durable/m");
  REQUIRE(r.put(ns, key(1), 0).is_ok());  // persist puts stay on the host path
  CHECK(r.metrics.gpu_puts.load() == 0);
  CHECK(r.metrics.persisted.load() == 1);
  REQUIRE(r.engine->disk()->find("durable/m", key(1)).has_value());
  auto c = r.engine->remove(ns, std::vector<BlockKey>{key(1)});
  CHECK(c.removed == 1);
  CHECK_FALSE(r.engine->disk()->find("durable/m", key(1)).has_value());
  CHECK_FALSE(r.engine->is_cached(ns, key(1)));
}

TEST_CASE("engine: staged bytes that disagree with the put's layout abort it") {
  Rig r;
  const uint32_t ns = r.ns("m");
  Engine::PutRequest req;
  req.ns = ns;
  req.key = key(1);
  req.client_layout = f16_layout(kBlock);
  auto id = run(r.engine->begin_put(r.sid, std::move(req)));
  REQUIRE(id.is_ok());
  std::vector<std::byte> short_bytes(kBlock / 2);
  auto sealed = run(r.engine->seal(r.sid, *id, short_bytes));
  CHECK(sealed.status().code() == Errc::kInvalidArgument);
  CHECK_FALSE(r.engine->is_cached(ns, key(1)));
  CHECK(r.engine->host().usage().reserved_bytes == 0);
}

TEST_CASE("engine: a disk that fails every read turns promotions into misses, never wrong bytes") {
  auto plan = std::make_shared<FaultPlan>();
  auto mem = make_memory_disk();
  EngineHooks hooks;
  hooks.disk_device = [mem, plan](const DiskOptions&) -> Result<std::unique_ptr<Device>> {
    return make_fault_device(make_memory_device(mem), plan);
  };
  Rig r({}, std::move(hooks));
  const uint32_t ns = r.ns("m");
  for (int i = 0; i < 30; ++i) REQUIRE(r.put(ns, key(i)).is_ok());
  r.engine->disk()->flush();
  FaultRule rule;
  rule.op = FaultRule::Op::kRead;
  plan->add(rule);
  auto g = run(r.engine->get(r.sid, ns, {key(0)}));
  CHECK(g[0].code == Errc::kNotFound);
  CHECK(r.metrics.promotion_failures.load() >= 1);
  plan->clear();
  // The engine keeps serving: later blocks are still there.
  auto later = run(r.engine->get(r.sid, ns, {key(29)}));
  REQUIRE(later[0].code == Errc::kOk);
  CHECK(r.bytes_of(later[0]) == pattern(key(29), kBlock));
}

TEST_CASE("engine: a get of a block whose demotion is still queued waits for it, never misses") {
  // Every disk write takes 20 ms: demotions sit in the disk tier's queue while the gets come.
  auto plan = std::make_shared<FaultPlan>();
  auto mem = make_memory_disk();
  EngineHooks hooks;
  hooks.disk_device = [mem, plan](const DiskOptions&) -> Result<std::unique_ptr<Device>> {
    return make_fault_device(make_memory_device(mem), plan);
  };
  FaultRule slow;
  slow.op = FaultRule::Op::kWrite;
  slow.match = [](uint32_t, uint64_t, size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return false;  // never fires: only slows the write down
  };
  plan->add(slow);
  Rig r({}, std::move(hooks));
  const uint32_t ns = r.ns("m");
  constexpr int kBlocks = 30;  // 30 MiB through a 16 MiB host tier
  for (int i = 0; i < kBlocks; ++i) REQUIRE(r.put(ns, key(i)).is_ok());
  int queued = 0;
  for (int i = 0; i < kBlocks; ++i) queued += r.engine->disk()->writing(NsKey{ns, key(i)});
  CHECK(queued > 0);  // the case under test happens
  CHECK(run(r.engine->lookup(r.sid, ns, {key(0), key(1)}, false)).matched == 2);
  for (int i = 0; i < kBlocks; ++i) {
    INFO("block " << i);
    auto g = run(r.engine->get(r.sid, ns, {key(i)}));
    REQUIRE(g[0].code == Errc::kOk);
    CHECK(r.bytes_of(g[0]) == pattern(key(i), kBlock));
    r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
  }
  plan->clear();
}

TEST_CASE("engine: admin eviction and remove go down the whole ladder by namespace id") {
  Rig r;
  const uint32_t a = r.ns("m/a");
  const uint32_t b = r.ns("m/b");
  // 30 blocks of 1 MiB each through a 16 MiB host tier: the first ones live only on disk.
  for (int i = 0; i < 15; ++i) {
    REQUIRE(r.put(a, key(i)).is_ok());
    REQUIRE(r.put(b, key(i)).is_ok());
  }
  r.engine->disk()->flush();
  REQUIRE(r.engine->disk()->find("m/a", key(0)).has_value());
  // Remove reaches the disk copy of one namespace's key and leaves the other's.
  auto removed = r.engine->remove(a, std::vector<BlockKey>{key(0)});
  CHECK(removed.removed == 1);
  CHECK_FALSE(r.engine->is_cached(a, key(0)));
  CHECK(r.engine->is_cached(b, key(0)));
  // Evicting namespace m/b from every tier leaves m/a's blocks where they were.
  std::vector<BlockKey> none;
  auto c = r.engine->evict(std::string("m/b"), none, false, true, true, true);
  CHECK(c.disk > 0);
  CHECK(c.host.evicted > 0);
  for (int i = 0; i < 15; ++i) CHECK_FALSE(r.engine->is_cached(b, key(i)));
  for (int i = 1; i < 15; ++i) CHECK(r.engine->is_cached(a, key(i)));
  // A namespace named only by the admin request is interned and matches nothing.
  auto none_evicted = r.engine->evict(std::string("m/never"), none, false, true, true, true);
  CHECK(none_evicted.disk == 0);
  CHECK(none_evicted.host.evicted == 0);
  // Everything: the disk tier too, whatever namespace its blocks belong to.
  auto all = r.engine->evict(std::nullopt, none, true, true, true, true);
  CHECK(all.disk + all.host.evicted > 0);
  for (int i = 1; i < 15; ++i) CHECK_FALSE(r.engine->is_cached(a, key(i)));
}

namespace {

// fp16 [rows, 128]: N(0, 1), with channels 3, 40, 77 and 101 scaled 10, 14, 17 and 20x.
std::vector<float> keys_with_outliers(uint64_t rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(rows * 128);
  for (float& x : v) x = dist(rng);
  const std::pair<int, float> outliers[] = {{3, 10.0f}, {40, 14.0f}, {77, 17.0f}, {101, 20.0f}};
  for (uint64_t r = 0; r < rows; ++r) {
    for (auto [c, s] : outliers) v[r * 128 + c] *= s;
  }
  return v;
}

// Puts "k" and "v" (both [256, 128] fp16, the same data) into `ns`, gets the block back and
// returns the mean absolute error of each tensor decoded from the host tier, and k's header.
struct RoundTrip {
  double k_err = 0, v_err = 0;
  nf4::Header k_header, v_header;
};

// Keys embed their namespace (chain hashes), so each namespace gets its own `id`.
RoundTrip round_trip(Rig& r, uint32_t ns, uint64_t id, const std::vector<float>& values) {
  const uint64_t rows = 256, n = rows * 128;
  std::vector<std::byte> staged(2 * n * 2);
  std::vector<std::byte> f16s(n * 2);
  for (uint64_t i = 0; i < n; ++i) {
    const uint16_t h = nf4::dev::f32_to_f16(values[i]);
    std::memcpy(f16s.data() + 2 * i, &h, 2);
  }
  std::memcpy(staged.data(), f16s.data(), n * 2);
  std::memcpy(staged.data() + n * 2, f16s.data(), n * 2);
  Engine::PutRequest req;
  req.ns = ns;
  req.key = key(id);
  for (int i = 0; i < 2; ++i) {
    TensorLayout t;
    t.name = i == 0 ? "k" : "v";
    t.dtype = DType::kF16;
    t.shape = {rows, 128};
    t.nf4_layout = i == 0 ? Nf4Layout::kColumnBlocks : Nf4Layout::kRowBlocks;
    t.offset = i * n * 2;
    t.bytes = t.raw_bytes = n * 2;
    req.client_layout.tensors.push_back(t);
  }
  req.client_layout.total_bytes = 2 * n * 2;
  auto put = run(r.engine->begin_put(r.sid, std::move(req)));
  REQUIRE(put.is_ok());
  REQUIRE(run(r.engine->seal(r.sid, *put, staged)).is_ok());
  auto g = run(r.engine->get(r.sid, ns, {key(id)}));
  REQUIRE(g[0].code == Errc::kOk);
  RoundTrip out;
  for (size_t i = 0; i < 2; ++i) {
    const TensorLayout& t = g[0].layout.tensors()[i];
    REQUIRE(t.codec == Codec::kNf4);
    std::span<const std::byte> enc(r.engine->host().data(g[0].extent) + t.offset, t.bytes);
    auto h = nf4::parse_header(enc);
    REQUIRE(h.is_ok());
    (i == 0 ? out.k_header : out.v_header) = *h;
    std::vector<float> back(n);
    REQUIRE(nf4::decode(enc, DType::kF32, std::as_writable_bytes(std::span(back))).is_ok());
    double err = 0;
    for (uint64_t k = 0; k < n; ++k) {
      err += std::fabs(back[k] - nf4::dev::f16_to_f32(nf4::dev::f32_to_f16(values[k])));
    }
    (i == 0 ? out.k_err : out.v_err) = err / static_cast<double>(n);
  }
  CHECK(r.engine->release(r.sid, std::span(&g[0].lease_id, 1)) == 1);
  return out;
}

}  // namespace

TEST_CASE("engine: nf4_outlier_channels keeps key channels exactly, values untouched") {
  Rig r(
      "[[namespace]]\nprefix = \"nf4/\"\ncodec = \"nf4\"\n"
      "[[namespace]]\nprefix = \"out/\"\ncodec = \"nf4\"\nnf4_outlier_channels = 4\n"
      "[[namespace]]\nprefix = \"outp/\"\ncodec = \"nf4\"\nnf4_outlier_channels = 4\n"
      "disk = \"persist\"\n");
  const std::vector<float> values = keys_with_outliers(256, 9);
  REQUIRE(r.config.rule_for("out/m")->nf4_outlier_channels == 4);
  const RoundTrip plain = round_trip(r, r.ns("nf4/m"), 50, values);
  const RoundTrip kept = round_trip(r, r.ns("out/m"), 51, values);
  // The defaults: format v2 with double quant, no outlier channels.
  CHECK(plain.k_header.params.version == nf4::kVersion);
  CHECK(plain.k_header.params.double_quant);
  CHECK(plain.k_header.num_outliers == 0);
  // Four channels of "k" kept; "v" (not a key tensor) encoded exactly as without the option.
  CHECK(kept.k_header.num_outliers == 4);
  CHECK_FALSE(kept.v_header.params.keep_outlier_channels);
  CHECK(kept.v_err == plain.v_err);
  INFO("k error without " << plain.k_err << ", with outlier channels " << kept.k_err);
  CHECK(kept.k_err < 0.8 * plain.k_err);
  // fp16 puts land in the GPU tier; the copies above came down through demote_block, which
  // encodes outlier channels on the CPU.  A persist namespace's put stays in the host tier;
  // a GPU get of it decodes the outlier channels on the CPU too (the device kernels have
  // none): the pool holds exactly what the CPU decoder gives.
  const uint32_t ns = r.ns("outp/m");
  const RoundTrip persisted = round_trip(r, ns, 52, values);
  CHECK(persisted.k_header.num_outliers == 4);
  auto host = run(r.engine->get(r.sid, ns, {key(52)}));
  REQUIRE(host[0].code == Errc::kOk);
  const TensorLayout hk = host[0].layout.tensors()[0];
  std::vector<std::byte> want(256 * 128 * 2);
  REQUIRE(
      nf4::decode({r.engine->host().data(host[0].extent) + hk.offset, hk.bytes}, DType::kF16, want)
          .is_ok());
  r.engine->release(r.sid, std::span(&host[0].lease_id, 1));
  auto g = run(r.engine->get(r.sid, ns, {key(52)}, Placement{true, 0}));
  REQUIRE(g[0].code == Errc::kOk);
  REQUIRE(g[0].tier == TierKind::kGpu);
  const std::vector<std::byte> pool = r.bytes_of(g[0]);
  const TensorLayout gk = g[0].layout.tensors()[0];
  CHECK(std::equal(want.begin(), want.end(), pool.begin() + gk.offset));
  r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
}

// An async GPU get is answered once the promotion is queued: its GPU grants carry the pool's
// ready event until the device is done, and the host blocks the device reads stay held by
// the engine until then, even when the session that asked closes.  A get that did not ask
// async gets ready blocks (the daemon waits).  On the emulation the device work is done before
// the answer; hold_completions() keeps the completion back as a device still working would.
TEST_CASE("engine: an async GPU get carries the ready event until the device is done") {
  Rig r("[[namespace]]\nprefix = \"q/\"\ncodec = \"nf4\"\n");  // promotions decode on the device
  const uint32_t ns = r.ns("q/m");
  // 8 puts into the 4-block pool: the first ones are evicted, copied down to the host tier.
  for (int i = 0; i < 8; ++i) REQUIRE(r.put(ns, key(i), 0).is_ok());
  const NsKey id{ns, key(0)};
  REQUIRE(r.engine->host().find(id) != nullptr);
  REQUIRE(r.engine->host().find(NsKey{ns, key(1)}) != nullptr);
  // Whether the host block is leased, read under the engine's lock: an admin eviction of the
  // host tier skips it (and evicts it once nothing holds it; the GPU copy stays).
  const BlockKey k0 = key(0);
  auto host_held = [&] {
    return r.engine->evict(std::string("q/m"), std::span(&k0, 1), false, true, false)
        .host.skipped_leased;
  };
  r.engine->hold_completions(true);
  const uint64_t asker = r.engine->open_session(PeerInfo{});
  auto g = run(r.engine->get(asker, ns, {key(0)}, Placement{true, 0, true}));
  REQUIRE(g[0].code == Errc::kOk);
  CHECK(g[0].tier == TierKind::kGpu);
  CHECK(g[0].ready_event != 0);
  // The emulation wrote them already: the host block's NF4, decoded.
  auto h = run(r.engine->get(r.sid, ns, {key(0)}));
  REQUIRE(h[0].tier == TierKind::kHost);
  const TensorLayout t = h[0].layout.to_layout().tensors.at(0);
  REQUIRE(t.codec == Codec::kNf4);
  std::vector<std::byte> want(kBlock);
  REQUIRE(nf4::decode(std::span(r.engine->host().data(h[0].extent) + t.offset, t.bytes),
                      DType::kF16, want)
              .is_ok());
  CHECK(r.bytes_of(g[0]) == want);
  r.engine->release(r.sid, std::span(&h[0].lease_id, 1));
  CHECK(r.metrics.gpu_async_promotions.load() == 1);
  // The host block is held by the promotion, not by the session's lease.
  CHECK(host_held() == 1);
  // Another async get of it carries the same event; a plain one gets it ready.
  auto again = run(r.engine->get(r.sid, ns, {key(0)}, Placement{true, 0, true}));
  CHECK(again[0].ready_event == g[0].ready_event);
  auto plain = run(r.engine->get(r.sid, ns, {key(0)}, Placement{true, 0}));
  CHECK(plain[0].tier == TierKind::kGpu);
  CHECK(plain[0].ready_event == 0);
  CHECK(r.metrics.gpu_ready_waits.load() == 1);
  // The asker goes away while the device works: the host block stays held.
  r.engine->close_session(asker);
  CHECK(host_held() == 1);
  CHECK(r.metrics.gpu_async_completions.load() == 0);
  r.engine->hold_completions(false);
  for (int i = 0; i < 2000 && r.metrics.gpu_async_completions.load() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(r.metrics.gpu_async_completions.load() == 1);
  CHECK(host_held() == 0);
  // Ready now: new grants carry no event.
  auto later = run(r.engine->get(r.sid, ns, {key(0)}, Placement{true, 0, true}));
  CHECK(later[0].ready_event == 0);
  // A get that did not ask async never waits on anything it promoted itself.
  auto other = run(r.engine->get(r.sid, ns, {key(1)}, Placement{true, 0}));
  CHECK(other[0].tier == TierKind::kGpu);
  CHECK(other[0].ready_event == 0);
  CHECK(r.metrics.gpu_async_promotions.load() == 1);
}
