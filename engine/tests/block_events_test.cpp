// KV events from the engine (engine/block_events.h): what a recording sink hears when blocks are
// put, evicted to the disk tier, promoted back, put on a GPU, removed and evicted by an admin.
// The engine runs in-process on an in-memory disk device and the GPU emulation.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <optional>

#include "engine/engine.h"
#include "tests/testing/devices/memory_device.h"

using namespace kvtier;
using boost::asio::awaitable;

namespace {

constexpr uint64_t kBlock = 1 << 20;  // 16 fill the host tier

template <typename T>
awaitable<void> store(awaitable<T> a, std::optional<T>* out) {
  *out = co_await std::move(a);
}

template <typename T>
T run(awaitable<T> a) {
  static boost::asio::io_context io;  // outlives the disk threads' last completions
  io.restart();
  std::optional<T> out;
  boost::asio::co_spawn(io, store(std::move(a), &out), boost::asio::detached);
  io.run();
  REQUIRE(out.has_value());
  return std::move(*out);
}

struct Event {
  char type;  // 's' stored, 'r' removed, 'c' cleared
  std::string ns;
  std::vector<BlockKey> keys;
  Medium medium = Medium::kCpu;
};

class Recorder final : public BlockEventSink {
 public:
  void stored(std::string_view ns, std::span<const BlockKey> keys, Medium m,
              std::optional<BlockKey>) override {
    add({'s', std::string(ns), {keys.begin(), keys.end()}, m});
  }
  void removed(std::string_view ns, std::span<const BlockKey> keys, Medium m) override {
    add({'r', std::string(ns), {keys.begin(), keys.end()}, m});
  }
  void cleared() override { add({'c', {}, {}, Medium::kCpu}); }

  std::vector<Event> take() {
    std::lock_guard lock(mu_);
    return std::exchange(events_, {});
  }

 private:
  void add(Event e) {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
  }
  std::mutex mu_;
  std::vector<Event> events_;
};

// Whether `events` holds a `type` event of `medium` naming `key`.
bool has(const std::vector<Event>& events, char type, Medium medium, const BlockKey& key) {
  return std::any_of(events.begin(), events.end(), [&](const Event& e) {
    return e.type == type && e.medium == medium &&
           std::find(e.keys.begin(), e.keys.end(), key) != e.keys.end();
  });
}

struct Rig {
  // gpu: an emulated GPU tier, where fp16 puts land; without it they land in the host tier.
  explicit Rig(bool gpu) {
    spdlog::set_level(spdlog::level::warn);
    static std::atomic<int> n{0};
    const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(n++);
    dir = std::filesystem::temp_directory_path() / ("kvtier-events-" + tag);
    std::filesystem::create_directories(dir);
    config = config::parse(
        "[daemon]\nstate_dir = \"" + dir.string() + "\"\nshm_prefix = \"kvtier-events-" + tag +
        "\"\n[host]\nsize = \"16MiB\"\n"
        "[disk]\nsize = \"64MiB\"\nregion_bytes = \"8MiB\"\n" +
        (gpu ? "[gpu]\nbackend = \"emulation\"\nsize = \"4MiB\"\n" : "[gpu]\nbackend = \"off\"\n") +
        std::string("[index]\nenabled = false\n[session]\nstaging_bytes = \"4MiB\"\n"
                    "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"));
    EngineHooks hooks;
    auto mem = make_memory_disk();
    hooks.disk_device = [mem](const DiskOptions&) -> Result<std::unique_ptr<Device>> {
      return make_memory_device(mem);
    };
    engine = Engine::open(config, metrics, std::move(hooks));
    engine->set_event_sink(&sink);
    sid = engine->open_session(PeerInfo{});
  }
  ~Rig() {
    engine.reset();
    std::filesystem::remove_all(dir);
  }

  // fp16 (a GPU put when there is a GPU tier), or f32 (always the host tier).
  Result<uint64_t> put(uint32_t ns, const BlockKey& key, int device = -1, bool f32 = false) {
    Engine::PutRequest req;
    req.ns = ns;
    req.key = key;
    TensorLayout t;
    t.name = "kv";
    t.dtype = f32 ? DType::kF32 : DType::kF16;
    t.shape = {kBlock / (f32 ? 4 : 2) / 64, 64};
    t.bytes = t.raw_bytes = kBlock;
    req.client_layout.tensors.push_back(t);
    req.client_layout.total_bytes = kBlock;
    req.device = device;
    auto id = run(engine->begin_put(sid, std::move(req)));
    if (!id) return id.status();
    std::vector<std::byte> bytes(kBlock, std::byte{0});
    if (!f32)
      for (uint64_t i = 1; i < kBlock; i += 2) bytes[i] = std::byte{0x3c};  // 1.0 in fp16
    return run(engine->seal(sid, *id, bytes));
  }

  std::filesystem::path dir;
  config::Config config;
  Metrics metrics;
  Recorder sink;
  std::unique_ptr<Engine> engine;
  uint64_t sid = 0;
};

BlockKey key(uint64_t i) {
  return BlockKey{i, 0xe7e7};
}

}  // namespace

TEST_CASE("block events: put, eviction to disk, promotion back, remove") {
  Rig r(false);
  const uint32_t ns = r.engine->resolve_namespace("m/a", {}).value();
  REQUIRE(r.put(ns, key(0)));
  auto ev = r.sink.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].type == 's');
  CHECK(ev[0].ns == "m/a");
  CHECK(ev[0].medium == Medium::kCpu);
  CHECK(ev[0].keys == std::vector<BlockKey>{key(0)});

  // Twenty 1 MiB blocks through a 16 MiB host tier: the first ones are evicted to the disk.
  for (uint64_t i = 1; i < 20; ++i) REQUIRE(r.put(ns, key(i)));
  r.engine->disk()->flush();
  ev = r.sink.take();
  CHECK(has(ev, 'r', Medium::kCpu, key(0)));
  CHECK(has(ev, 's', Medium::kDisk, key(0)));
  CHECK(has(ev, 's', Medium::kCpu, key(19)));
  CHECK_FALSE(has(ev, 'r', Medium::kCpu, key(19)));

  // A get promotes key(0) back into the host tier.
  auto g = run(r.engine->get(r.sid, ns, {key(0)}));
  REQUIRE(g[0].code == Errc::kOk);
  r.engine->release(r.sid, std::span(&g[0].lease_id, 1));
  ev = r.sink.take();
  CHECK(has(ev, 's', Medium::kCpu, key(0)));

  // remove: out of the host tier and the disk tier (the disk tier reports its own).
  const BlockKey k0 = key(0);
  r.engine->remove(ns, std::span(&k0, 1));
  ev = r.sink.take();
  CHECK(has(ev, 'r', Medium::kCpu, key(0)));
  CHECK(has(ev, 'r', Medium::kDisk, key(0)));
}

TEST_CASE("block events: GPU puts, admin eviction by namespace, and evict --all") {
  Rig r(true);
  const uint32_t a = r.engine->resolve_namespace("m/a", {}).value();
  const uint32_t b = r.engine->resolve_namespace("m/b", {}).value();
  REQUIRE(r.put(a, key(1), 0));  // fp16 asked for on GPU 0: the emulated pool
  REQUIRE(r.put(b, key(2), -1, true));
  auto ev = r.sink.take();
  CHECK(has(ev, 's', Medium::kGpu, key(1)));
  CHECK(has(ev, 's', Medium::kCpu, key(2)));

  // Only m/b's host blocks: one BlockRemoved naming m/b.
  auto c = r.engine->evict(std::string("m/b"), {}, false, true, false, false);
  CHECK(c.host.evicted == 1);
  ev = r.sink.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].type == 'r');
  CHECK(ev[0].ns == "m/b");
  CHECK(ev[0].keys == std::vector<BlockKey>{key(2)});

  // Everything from every tier, nothing leased: AllBlocksCleared.
  REQUIRE(r.put(b, key(3), -1, true));
  (void)r.sink.take();
  r.engine->evict(std::nullopt, {}, true, true, true, true);
  ev = r.sink.take();
  REQUIRE_FALSE(ev.empty());
  CHECK(ev.back().type == 'c');

  // A leased block survives evict --all: the others are reported one by one instead.
  REQUIRE(r.put(b, key(4), -1, true));
  REQUIRE(r.put(b, key(5), -1, true));
  auto g = run(r.engine->get(r.sid, b, {key(4)}));
  REQUIRE(g[0].code == Errc::kOk);
  (void)r.sink.take();
  r.engine->evict(std::nullopt, {}, true, true, true, true);
  ev = r.sink.take();
  CHECK(has(ev, 'r', Medium::kCpu, key(5)));
  CHECK_FALSE(has(ev, 'r', Medium::kCpu, key(4)));
  CHECK(std::none_of(ev.begin(), ev.end(), [](const Event& e) { return e.type == 'c'; }));
}
