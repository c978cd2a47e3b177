// The GPU tier through the daemon: puts, gets, leases, eviction with demotion to the host
// tier, promotion from it, client death, several client processes, handle passing and daemon
// restarts.  CI runs it on the host emulation of the device backend; tests/gpu/ runs the same
// cases on real CUDA (KVTIER_TEST_GPU_BACKEND=cuda) and skips them, saying why, without a GPU.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kvtier/client.h"
#include "tests/testing/child_process.h"
#include "tests/testing/daemon.h"
#include "tests/testing/device_read.h"
#include "tiers/gpu/device_backend.h"

using namespace kvtier;
using kvtier::testing::child_env;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::in_child;
using kvtier::testing::read_tensor;
using kvtier::testing::spawn_self;
using kvtier::testing::wait_child;

namespace {

std::string backend() {
  const char* b = std::getenv("KVTIER_TEST_GPU_BACKEND");
  return b && *b ? b : "emulation";
}

// False (and says why) when the suite runs on CUDA and this machine has no usable device.
bool suite_ready() {
  if (backend() != "cuda") return true;
  static const std::string why = [] {
    auto b = gpu::make_cuda_backend();
    return b ? std::string() : b.status().message();
  }();
  if (!why.empty()) WARN("skipping the CUDA GPU tier suite: " << why);
  return why.empty();
}

void must(const Status& s) {
  INFO(s.to_string());
  REQUIRE(s.is_ok());
}

nlohmann::json stats(Client& c) {
  return nlohmann::json::parse(c.stats_json().value());
}
uint64_t counter(Client& c, const char* name) {
  return stats(c)["counters"][name].get<uint64_t>();
}
nlohmann::json pool(Client& c, size_t i = 0) {
  return stats(c)["tiers"]["gpu"]["pools"].at(i);
}

DaemonOptions gpu_daemon(const std::string& codec = "fp16", uint64_t gpu_bytes = 8ull << 20,
                         const std::string& devices = "[0]") {
  DaemonOptions o;
  o.gpu_backend = backend();
  o.gpu_bytes = gpu_bytes;
  o.gpu_devices = devices;
  o.codec = codec;
  o.host_bytes = 32ull << 20;
  return o;
}

std::vector<BlockKey> chain(std::string_view ns, size_t n, uint32_t seed = 1) {
  std::vector<uint32_t> tokens(n * 16);
  std::iota(tokens.begin(), tokens.end(), seed);
  return chain_keys(ns, tokens, 16);
}

// fp16 K and V of [tokens, 128], normally distributed (finite, so NF4 can store them).
struct HalfBlock {
  std::vector<_Float16> k, v;
  std::vector<TensorIn> tensors;
  HalfBlock(uint64_t tokens, uint32_t seed, DType dtype = DType::kF16) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.f, 1.f);
    k.resize(tokens * 128);
    v.resize(tokens * 128);
    for (auto& x : k) x = static_cast<_Float16>(n(rng));
    for (auto& x : v) x = static_cast<_Float16>(n(rng));
    tensors = {TensorIn{"k", dtype, {tokens, 128}, k.data(), Nf4Layout::kColumnBlocks},
               TensorIn{"v", dtype, {tokens, 128}, v.data()}};
  }
  std::span<const std::byte> bytes(const std::vector<_Float16>& t) const {
    return std::as_bytes(std::span(t));
  }
};

std::vector<std::byte> read(const TensorView& t) {
  auto r = read_tensor(t);
  INFO(r.status().to_string());
  REQUIRE(r.is_ok());
  return std::move(r).value();
}

bool same(const std::vector<std::byte>& a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

// What NF4 makes of `src` (fp16 [rows, 128] along `layout`) in a default NF4 namespace
// (double quant on): the CPU codec, byte-identical to the device kernels.
std::vector<std::byte> nf4_round_trip(std::span<const std::byte> src, uint64_t rows,
                                      Nf4Layout layout) {
  std::vector<std::byte> enc(nf4_encoded_size(DType::kF16, layout, true, rows, 128));
  must(nf4_quantize(DType::kF16, layout, true, rows, 128, src, enc));
  std::vector<std::byte> out(src.size());
  must(nf4_dequantize(enc, DType::kF16, out));
  return out;
}

size_t open_fds() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

GetOptions on_gpu(int device = -1) {
  return GetOptions{true, device};
}

}  // namespace

TEST_CASE("gpu: the daemon reports its GPU tier in hello, stats and health", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto c = Client::connect(d.socket()).value();
  CHECK(c->gpu_backend() == backend());
  CHECK(c->gpu_devices() == std::vector<int>{0});
  auto p = pool(*c);
  CHECK(p["capacity_bytes"].get<uint64_t>() >= (8ull << 20));
  CHECK(p["blocks"] == 0);
  auto h = nlohmann::json::parse(c->health_json().value());
  CHECK(h["tiers"]["gpu"]["backend"] == backend());
  CHECK_THAT(h["tiers"]["gpu"]["status"].get<std::string>(), Catch::Contains("device(s) 0"));
}

TEST_CASE("gpu: without a GPU tier, gets that want one fail clearly", "[gpu]") {
  Daemon d;  // gpu.backend = "off"
  auto c = Client::connect(d.socket()).value();
  CHECK(c->gpu_backend().empty());
  auto keys = chain("m", 1);
  HalfBlock b(16, 1);
  must(c->put("m", keys[0], b.tensors));
  auto lease = c->get("m", keys, on_gpu());
  REQUIRE_FALSE(lease);
  CHECK(lease.status().code() == Errc::kUnavailable);
  CHECK_THAT(lease.status().message(), Catch::Contains("no GPU tier"));
  auto h = nlohmann::json::parse(c->health_json().value());
  CHECK(h["tiers"]["gpu"]["backend"] == "none");
  CHECK_THAT(h["tiers"]["gpu"]["status"].get<std::string>(), Catch::Contains("off"));
}

TEST_CASE("gpu: asked for CUDA on a host without a usable device, the daemon serves without",
          "[gpu]") {
  auto probe = gpu::make_cuda_backend();
  if (probe) {
    WARN("this host has a CUDA device: the no-driver case cannot be shown here");
    return;
  }
  DaemonOptions o;
  o.gpu_backend = "cuda";
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  CHECK(c->gpu_backend().empty());
  auto h = nlohmann::json::parse(c->health_json().value());
  CHECK(h["status"] == "serving");
  CHECK(h["tiers"]["gpu"]["requested"] == "cuda");
  CHECK(h["tiers"]["gpu"]["backend"] == "none");
  // The probe's reason, word for word (no driver, or a build without CUDA).
  CHECK_THAT(h["tiers"]["gpu"]["status"].get<std::string>(),
             Catch::Contains(probe.status().message()));
  auto keys = chain("m", 1);
  HalfBlock b(16, 1);
  must(c->put("m", keys[0], b.tensors));  // the host tier serves
  CHECK(c->get("m", keys).value().found() == 1);
}

TEST_CASE("gpu: an fp16 put lands in the GPU tier; a GPU get leases it bit-exact", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("nf4"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 2);
  HalfBlock b0(64, 10), b1(64, 11);
  must(c->put("m", keys[0], b0.tensors));
  must(c->put("m", keys[1], b1.tensors));
  CHECK(pool(*c)["blocks"] == 2);
  CHECK(stats(*c)["tiers"]["host"]["blocks"] == 0);
  CHECK(counter(*c, "gpu_puts") == 2);
  CHECK(c->lookup("m", keys).value() == 2);
  CHECK(c->put("m", keys[0], b0.tensors).code() == Errc::kAlreadyExists);

  auto lease = c->get("m", keys, on_gpu()).value();
  REQUIRE(lease.found() == 2);
  for (size_t i = 0; i < 2; ++i) {
    const LeasedBlock& blk = lease.block(i);
    const HalfBlock& src = i == 0 ? b0 : b1;
    CHECK(blk.on_gpu);
    CHECK(blk.device == 0);
    const TensorView* k = blk.tensor("k");
    REQUIRE(k != nullptr);
    CHECK(k->device == 0);
    CHECK(k->codec == Codec::kRaw);
    CHECK(k->host_accessible == (backend() == "emulation"));
    CHECK(same(read(*k), src.bytes(src.k)));
    CHECK(same(read(*blk.tensor("v")), src.bytes(src.v)));
    if (k->host_accessible) CHECK(k->verify());
  }
  CHECK(pool(*c)["leased_blocks"] == 2);
  must(lease.release());
  CHECK(pool(*c)["leased_blocks"] == 0);
}

TEST_CASE("gpu: a host get of a GPU block copies it down in the host format", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("nf4"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 1);
  HalfBlock b(64, 3);
  must(c->put("m", keys[0], b.tensors));
  auto lease = c->get("m", keys).value();  // host memory
  REQUIRE(lease.found() == 1);
  CHECK_FALSE(lease.block(0).on_gpu);
  const TensorView* k = lease.block(0).tensor("k");
  const TensorView* v = lease.block(0).tensor("v");
  CHECK(k->codec == Codec::kNf4);
  CHECK(k->nf4_layout == Nf4Layout::kColumnBlocks);  // the layout asked for at put
  CHECK(k->verify());
  std::vector<std::byte> out(k->raw_bytes);
  must(decode(*k, DType::kF16, out));
  CHECK(same(out, nf4_round_trip(b.bytes(b.k), 64, Nf4Layout::kColumnBlocks)));
  must(decode(*v, DType::kF16, out));
  CHECK(same(out, nf4_round_trip(b.bytes(b.v), 64, Nf4Layout::kRowBlocks)));
  CHECK(counter(*c, "gpu_copy_downs") == 1);
  // Both tiers hold it now; the GPU copy still serves GPU gets exactly.
  auto g = c->get("m", keys, on_gpu()).value();
  CHECK(g.block(0).on_gpu);
  CHECK(same(read(*g.block(0).tensor("k")), b.bytes(b.k)));
}

TEST_CASE("gpu: eviction demotes to host NF4; a GPU get promotes back on the device", "[gpu]") {
  if (!suite_ready()) return;
  // 8 MiB of GPU, 1 MiB blocks (2 x [2048, 128] fp16): the 12 puts evict at least 4.
  Daemon d(gpu_daemon("nf4"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 12);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < keys.size(); ++i) blocks.emplace_back(2048, 100 + i);
  for (size_t i = 0; i < keys.size(); ++i) must(c->put("m", keys[i], blocks[i].tensors));
  auto s = stats(*c);
  const uint64_t evicted = s["tiers"]["gpu"]["pools"][0]["evictions"].get<uint64_t>();
  CHECK(evicted >= 4);
  CHECK(s["counters"]["gpu_demotions"].get<uint64_t>() == evicted);
  CHECK(s["tiers"]["host"]["blocks"].get<uint64_t>() == evicted);
  CHECK(c->lookup("m", keys).value() == keys.size());  // nothing lost

  // A block that only the host tier holds now (kvtierctl ls names each block's tier).
  size_t i = keys.size();
  for (const auto& e : nlohmann::json::parse(c->list_json("m").value())) {
    if (e["tier"] != "host") continue;
    for (size_t j = 0; j < keys.size(); ++j)
      if (keys[j].hex() == e["key"]) i = j;
  }
  REQUIRE(i < keys.size());
  auto g = c->get("m", std::span(keys.data() + i, 1), on_gpu()).value();
  REQUIRE(g.found() == 1);
  CHECK(g.block(0).on_gpu);
  CHECK(counter(*c, "gpu_promotions") == 1);
  CHECK(same(read(*g.block(0).tensor("k")),
             nf4_round_trip(blocks[i].bytes(blocks[i].k), 2048, Nf4Layout::kColumnBlocks)));
  CHECK(same(read(*g.block(0).tensor("v")),
             nf4_round_trip(blocks[i].bytes(blocks[i].v), 2048, Nf4Layout::kRowBlocks)));
  CHECK(g.block(0).tensor("k")->checksum == 0);  // decoded on the device: not hashed
  CHECK(counter(*c, "gpu_promotion_batches") == 1);
}

TEST_CASE("gpu: a GPU get promotes its host blocks in one batch, byte-exact", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("nf4", 16ull << 20));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 6);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < keys.size(); ++i) blocks.emplace_back(256, 300 + i);
  for (size_t i = 0; i < keys.size(); ++i) must(c->put("m", keys[i], blocks[i].tensors));
  auto host = c->get("m", keys).value();  // copies down to NF4 in the host tier
  host.release().is_ok();
  (void)c->evict("m", {}, false, TierSel::kGpu).value();  // only the host tier holds them now
  auto g = c->get("m", keys, on_gpu()).value();
  CHECK(counter(*c, "gpu_promotions") == keys.size());
  CHECK(counter(*c, "gpu_promotion_batches") == 1);
  for (size_t i = 0; i < keys.size(); ++i) {
    INFO("block " << i);
    REQUIRE(g.block(i).on_gpu);
    CHECK(same(read(*g.block(i).tensor("k")),
               nf4_round_trip(blocks[i].bytes(blocks[i].k), 256, Nf4Layout::kColumnBlocks)));
    CHECK(same(read(*g.block(i).tensor("v")),
               nf4_round_trip(blocks[i].bytes(blocks[i].v), 256, Nf4Layout::kRowBlocks)));
  }
}

// An async GPU get (GetOptions::async): the daemon answers once the device work is queued;
// blocks still being written carry their pool's ready event, and Lease::wait() makes the
// reader wait for it (on the emulation there is nothing left to wait for).  The bytes after
// the wait are the promotion's.
TEST_CASE("gpu: an async GPU get promotes; after Lease::wait the bytes are the promotion's",
          "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("nf4", 16ull << 20));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 4);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < keys.size(); ++i) blocks.emplace_back(256, 400 + i);
  for (size_t i = 0; i < keys.size(); ++i) must(c->put("m", keys[i], blocks[i].tensors));
  c->get("m", keys).value().release().is_ok();            // copied down to NF4
  (void)c->evict("m", {}, false, TierSel::kGpu).value();  // only the host tier holds them
  GetOptions async = on_gpu();
  async.async = true;
  auto g = c->get("m", keys, async).value();
  CHECK(counter(*c, "gpu_async_promotions") == 1);
  CHECK(counter(*c, "gpu_promotions") == keys.size());
  must(g.wait());
  for (size_t i = 0; i < keys.size(); ++i) {
    INFO("block " << i);
    REQUIRE(g.block(i).on_gpu);
    CHECK(g.block(i).ready_event == 0);  // waited for on this thread
    CHECK(same(read(*g.block(i).tensor("k")),
               nf4_round_trip(blocks[i].bytes(blocks[i].k), 256, Nf4Layout::kColumnBlocks)));
    CHECK(same(read(*g.block(i).tensor("v")),
               nf4_round_trip(blocks[i].bytes(blocks[i].v), 256, Nf4Layout::kRowBlocks)));
  }
  g.release().is_ok();
  // The device finished: the host blocks the promotion held are released.
  for (int i = 0; i < 200 && counter(*c, "gpu_async_completions") == 0; ++i) ::usleep(10000);
  CHECK(counter(*c, "gpu_async_completions") == 1);
  CHECK(c->evict("m", {}, false, TierSel::kHost).value().skipped_leased == 0);
}

TEST_CASE("gpu: lossless namespaces demote and promote bit-exact", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("fp16"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 12);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < keys.size(); ++i) blocks.emplace_back(2048, 200 + i);
  for (size_t i = 0; i < keys.size(); ++i) must(c->put("m", keys[i], blocks[i].tensors));
  auto lease = c->get("m", keys, on_gpu()).value();  // promotes what was evicted (room allows)
  size_t on_device = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const LeasedBlock& b = lease.block(i);
    REQUIRE(b.found());
    on_device += b.on_gpu;
    // A block the GPU had no room for (all others leased) comes back from the host tier.
    CHECK(same(read(*b.tensor("k")), blocks[i].bytes(blocks[i].k)));
    CHECK(same(read(*b.tensor("v")), blocks[i].bytes(blocks[i].v)));
  }
  CHECK(on_device >= 6);
  CHECK(on_device < keys.size());
  CHECK(counter(*c, "gpu_promotion_fallbacks") == keys.size() - on_device);
}

TEST_CASE("gpu: leased blocks are never evicted; a full GPU sends puts to the host", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("fp16"));
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 10);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < keys.size(); ++i) blocks.emplace_back(2048, 300 + i);
  // 8 MiB of pool holds exactly 8 blocks of 1 MiB: fill it and lease every one.
  for (size_t i = 0; i < 8; ++i) must(c->put("m", keys[i], blocks[i].tensors));
  auto held = c->get("m", std::span(keys.data(), 8), on_gpu()).value();
  REQUIRE(held.found() == 8);
  for (size_t i = 0; i < 8; ++i) REQUIRE(held.block(i).on_gpu);
  for (size_t i = 8; i < 10; ++i) must(c->put("m", keys[i], blocks[i].tensors));
  CHECK(counter(*c, "gpu_put_fallbacks") == 2);
  CHECK(pool(*c)["evictions"] == 0);
  CHECK(stats(*c)["tiers"]["host"]["blocks"] == 2);
  for (size_t i = 0; i < 8; ++i)
    CHECK(same(read(*held.block(i).tensor("v")), blocks[i].bytes(blocks[i].v)));
  auto rest = c->get("m", std::span(keys.data() + 8, 2)).value();
  for (size_t i = 0; i < 2; ++i)
    CHECK(same(read(*rest.block(i).tensor("k")), blocks[8 + i].bytes(blocks[8 + i].k)));
}

TEST_CASE("gpu: non-fp16 blocks and persist namespaces stay on the host path", "[gpu]") {
  if (!suite_ready()) return;
  DaemonOptions o = gpu_daemon("fp16");
  o.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"p/\"\ndisk = \"persist\"\ncodec = \"fp16\"\n";
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  std::vector<float> f(256, 1.5f);
  auto k1 = chain("m", 1);
  must(c->put("m", k1[0], std::vector<TensorIn>{TensorIn{"x", DType::kF32, {256}, f.data()}}));
  HalfBlock b(16, 5);
  auto k2 = chain("p/m", 1);
  must(c->put("p/m", k2[0], b.tensors));
  CHECK(pool(*c)["blocks"] == 0);
  CHECK(stats(*c)["tiers"]["host"]["blocks"] == 2);
  // A GPU get promotes the persisted fp16 block.
  auto g = c->get("p/m", k2, on_gpu()).value();
  CHECK(g.block(0).on_gpu);
  CHECK(same(read(*g.block(0).tensor("k")), b.bytes(b.k)));
}

TEST_CASE("gpu: remove and kvtierctl-style eviction reach the GPU tier", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 3);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < 3; ++i) blocks.emplace_back(32, 400 + i);
  for (size_t i = 0; i < 3; ++i) must(c->put("m", keys[i], blocks[i].tensors));
  {
    auto lease = c->get("m", std::span(keys.data(), 1), on_gpu()).value();
    auto r = c->remove("m", std::span(keys.data(), 1)).value();
    CHECK(r.deferred == 1);  // leased: freed at release
    CHECK(same(read(*lease.block(0).tensor("k")), blocks[0].bytes(blocks[0].k)));
  }
  CHECK(pool(*c)["blocks"] == 2);
  auto e = c->evict("m", {}, false, TierSel::kGpu).value();
  CHECK(e.gpu_evicted == 2);
  CHECK(e.evicted == 0);
  CHECK(pool(*c)["blocks"] == 0);
  CHECK(c->lookup("m", keys).value() == 0);  // admin eviction does not demote
}

// The children of the two cases below are fresh processes (tests/testing/child_process.h):
// on CUDA the parent has initialised the driver (suite_ready, read_tensor), and a forked child
// of such a process cannot use CUDA.  They find the daemon in $KVTIER_TEST_SOCKET and build
// the keys and blocks from the same constants as their parent.  Exit codes: 0 all well,
// 2 no connection, 3 a lease short of blocks or not on the GPU, 4 bytes that differ (Catch
// itself exits 2 when the child case is missing, or with its failure count).

constexpr size_t kDeadClientBlocks = 2;
constexpr uint64_t kDeadClientTokens = 32;

TEST_CASE("gpu: a dead client's GPU leases are released and its fds closed", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", kDeadClientBlocks);
  HalfBlock b0(kDeadClientTokens, 1), b1(kDeadClientTokens, 2);
  must(c->put("m", keys[0], b0.tensors));
  must(c->put("m", keys[1], b1.tensors));
  auto pid = spawn_self("gpu_dead_client_child", {{"KVTIER_TEST_SOCKET", d.socket()}});
  INFO(pid.status().to_string());
  REQUIRE(pid.is_ok());
  REQUIRE(wait_child(*pid) == 0);
  for (int i = 0; i < 200 && pool(*c)["leased_blocks"] != 0; ++i) ::usleep(10000);
  CHECK(pool(*c)["leased_blocks"] == 0);
  CHECK(counter(*c, "leases_reclaimed") >= 2);
  CHECK(c->evict("m", {}, false, TierSel::kGpu).value().gpu_evicted == 2);

  // Importing a pool keeps no descriptor open: the mapping holds the memory.
  must(c->put("m", keys[0], b0.tensors));
  const size_t before = open_fds();
  auto lease = c->get("m", std::span(keys.data(), 1), on_gpu()).value();
  CHECK(open_fds() == before);
}

// The dead client: leases both GPU blocks, then exits without releasing them.
TEST_CASE("gpu: dead client child", "[.][gpu_dead_client_child]") {
  if (!in_child("gpu_dead_client_child")) return;
  auto cc = Client::connect(child_env("KVTIER_TEST_SOCKET"));
  if (!cc) ::_exit(2);
  auto lease = (*cc)->get("m", chain("m", kDeadClientBlocks), on_gpu());
  if (!lease || lease->found() != kDeadClientBlocks || !lease->block(0).on_gpu) ::_exit(3);
  ::_exit(0);  // no release, no destructors: a crash as far as the daemon can tell
}

constexpr size_t kSharedBlocks = 4;
constexpr uint64_t kSharedTokens = 64;
constexpr uint32_t kSharedSeed = 500;  // block i: HalfBlock(kSharedTokens, kSharedSeed + i)

TEST_CASE("gpu: several processes share a pool, each imported once per process", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto keys = chain("m", kSharedBlocks);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < kSharedBlocks; ++i) blocks.emplace_back(kSharedTokens, kSharedSeed + i);
  {
    auto c = Client::connect(d.socket()).value();
    for (size_t i = 0; i < kSharedBlocks; ++i) must(c->put("m", keys[i], blocks[i].tensors));
  }
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p) {
    auto pid = spawn_self("gpu_shared_pool_child", {{"KVTIER_TEST_SOCKET", d.socket()}});
    INFO(pid.status().to_string());
    REQUIRE(pid.is_ok());
    kids.push_back(*pid);
  }
  for (pid_t pid : kids) CHECK(wait_child(pid) == 0);
  // Two connections of one process see the pool at one address.
  auto a = Client::connect(d.socket()).value();
  auto b = Client::connect(d.socket()).value();
  auto la = a->get("m", std::span(keys.data(), 1), on_gpu()).value();
  auto lb = b->get("m", std::span(keys.data(), 1), on_gpu()).value();
  CHECK(la.block(0).tensor("k")->data == lb.block(0).tensor("k")->data);
}

// One of the sharing processes: 20 rounds of connect, GPU get of every block, bit-exact read.
TEST_CASE("gpu: shared pool child", "[.][gpu_shared_pool_child]") {
  if (!in_child("gpu_shared_pool_child")) return;
  const std::string socket = child_env("KVTIER_TEST_SOCKET");
  auto keys = chain("m", kSharedBlocks);
  std::vector<HalfBlock> blocks;
  for (uint32_t i = 0; i < kSharedBlocks; ++i) blocks.emplace_back(kSharedTokens, kSharedSeed + i);
  int bad = 0;
  for (int round = 0; round < 20; ++round) {
    auto cc = Client::connect(socket);
    if (!cc) ::_exit(2);
    auto lease = (*cc)->get("m", keys, on_gpu());
    if (!lease || lease->found() != kSharedBlocks) ::_exit(3);
    for (size_t i = 0; i < kSharedBlocks; ++i) {
      auto k = read_tensor(*lease->block(i).tensor("k"));
      if (!k || !same(*k, blocks[i].bytes(blocks[i].k))) ++bad;
    }
  }
  ::_exit(bad == 0 ? 0 : 4);
}

TEST_CASE("gpu: after a daemon restart clients re-import; stale connections fail cleanly",
          "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto keys = chain("m", 1);
  HalfBlock b(64, 7);
  auto old_client = Client::connect(d.socket()).value();
  must(old_client->put("m", keys[0], b.tensors));
  auto old_lease = old_client->get("m", keys, on_gpu()).value();
  const auto old_bytes = read(*old_lease.block(0).tensor("k"));
  d.restart();  // the GPU tier is not persistent: the block is gone with the old pool
  auto stale = old_client->get("m", keys, on_gpu());
  REQUIRE_FALSE(stale);
  CHECK(stale.status().code() == Errc::kUnavailable);
  // The old lease's mapping stays valid until released (the importer holds the memory).
  CHECK(same(read(*old_lease.block(0).tensor("k")), b.bytes(b.k)));
  CHECK(old_lease.release().is_ok());

  auto fresh = Client::connect(d.socket()).value();
  CHECK(fresh->lookup("m", keys).value() == 0);
  must(fresh->put("m", keys[0], b.tensors));
  auto lease = fresh->get("m", keys, on_gpu()).value();
  REQUIRE(lease.block(0).on_gpu);
  CHECK(same(read(*lease.block(0).tensor("k")), b.bytes(b.k)));
  CHECK(same(old_bytes, b.bytes(b.k)));
}

TEST_CASE("gpu: fusion state of a GPU chunk is kept with it", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon());
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 1);
  HalfBlock b(32, 8);
  must(c->put("m", keys[0], b.tensors));
  std::vector<_Float16> vis(64 * 256, static_cast<_Float16>(0.25f));
  must(c->put_fusion("m", keys[0],
                     std::vector<TensorIn>{TensorIn{"vision", DType::kF16, {64, 256}, vis.data()}},
                     "frame=17"));
  // The chunk's new block (KV + fusion) is in the host tier; its stale GPU copy is gone.
  CHECK(pool(*c)["blocks"] == 0);
  auto g = c->get("m", keys, on_gpu()).value();
  REQUIRE(g.block(0).on_gpu);
  REQUIRE(g.block(0).fusion.size() >= 1);
  CHECK(same(read(g.block(0).fusion[0]), std::as_bytes(std::span(vis))));
  CHECK(same(read(*g.block(0).tensor("k")), b.bytes(b.k)));
  if (backend() == "emulation") CHECK(g.block(0).fusion_metadata == "frame=17");
}

TEST_CASE("gpu: two devices: puts land on the client's device; other devices promote", "[gpu]") {
  if (!suite_ready()) return;
  if (backend() == "cuda") {
    auto be = gpu::make_cuda_backend();
    if (!be || (*be)->probe().devices.size() < 2) {
      WARN("skipping the two-device case: fewer than two CUDA devices");
      return;
    }
  }
  Daemon d(gpu_daemon("fp16", 8ull << 20, "[0, 1]"));
  ClientOptions o1;
  o1.socket = d.socket();
  o1.device = 1;
  auto c1 = Client::connect(o1).value();
  CHECK(c1->gpu_devices() == std::vector<int>{0, 1});
  auto keys = chain("m", 1);
  HalfBlock b(64, 9);
  must(c1->put("m", keys[0], b.tensors));
  CHECK(pool(*c1, 0)["blocks"] == 0);
  CHECK(pool(*c1, 1)["blocks"] == 1);
  auto g1 = c1->get("m", keys, on_gpu()).value();  // the client's device
  CHECK(g1.block(0).device == 1);
  auto g0 = c1->get("m", keys, on_gpu(0)).value();
  CHECK(g0.block(0).on_gpu);
  CHECK(g0.block(0).device == 0);
  CHECK(same(read(*g0.block(0).tensor("k")), b.bytes(b.k)));
  auto bad = c1->get("m", keys, on_gpu(5));
  REQUIRE_FALSE(bad);
  CHECK(bad.status().code() == Errc::kInvalidArgument);
  CHECK_THAT(bad.status().message(), Catch::Contains("no GPU tier on device 5"));
}

TEST_CASE("gpu: a client with another CUDA_VISIBLE_DEVICES finds its devices by UUID", "[gpu]") {
  if (!suite_ready()) return;
  if (backend() == "cuda") {
    // The CUDA runtime reads CUDA_VISIBLE_DEVICES once per process: the emulation, which reads
    // it at each connect, covers the translation.
    WARN("skipping the CUDA_VISIBLE_DEVICES case on CUDA");
    return;
  }
  struct Env {
    explicit Env(const char* v) { ::setenv("CUDA_VISIBLE_DEVICES", v, 1); }
    ~Env() { ::unsetenv("CUDA_VISIBLE_DEVICES"); }
  };
  Daemon d(gpu_daemon("fp16", 8ull << 20, "[0, 1]"));
  auto keys = chain("m", 2);
  HalfBlock b0(64, 21), b1(64, 22);
  {
    Env env("1");  // this process's device 0 is the daemon's device 1
    ClientOptions o;
    o.socket = d.socket();
    o.device = 0;
    auto c = Client::connect(o).value();
    CHECK(c->gpu_devices() == std::vector<int>{0});
    CHECK(stats(*c)["tiers"]["gpu"]["devices"][1]["uuid"] ==
          "GPU-6b767469-6572-656d-7567-707500000001");
    must(c->put("m", keys[0], b0.tensors));
    CHECK(pool(*c, 0)["blocks"] == 0);
    CHECK(pool(*c, 1)["blocks"] == 1);  // landed on the daemon's device 1
    auto g = c->get("m", std::span(keys.data(), 1), on_gpu()).value();
    REQUIRE(g.block(0).on_gpu);
    CHECK(g.block(0).device == 0);
    CHECK(g.block(0).tensors[0].device == 0);
    CHECK(same(read(*g.block(0).tensor("k")), b0.bytes(b0.k)));
    auto bad = c->get("m", keys, on_gpu(1));  // the daemon's device 0: not visible here
    REQUIRE_FALSE(bad);
    CHECK(bad.status().code() == Errc::kInvalidArgument);
    CHECK_THAT(bad.status().message(), Catch::Contains("no GPU tier on device 1 of this process"));
    CHECK_THAT(bad.status().message(), Catch::Contains("GPU-6b767469-6572-656d-7567-707500000000"));
  }
  {
    // By UUID, then by index: this process's 0 and 1 are the daemon's 1 and 0.
    Env env("GPU-6b767469-6572-656d-7567-707500000001,0");
    ClientOptions o;
    o.socket = d.socket();
    o.device = 1;
    auto c = Client::connect(o).value();
    CHECK(c->gpu_devices() == std::vector<int>{0, 1});
    must(c->put("m", keys[1], b1.tensors));
    CHECK(pool(*c, 0)["blocks"] == 1);  // the daemon's device 0
    auto g = c->get("m", keys, on_gpu(0)).value();
    for (size_t i = 0; i < 2; ++i) {
      INFO("block " << i);
      REQUIRE(g.block(i).on_gpu);
      CHECK(g.block(i).device == 0);
    }
    CHECK(same(read(*g.block(0).tensor("k")), b0.bytes(b0.k)));
    CHECK(same(read(*g.block(1).tensor("v")), b1.bytes(b1.v)));  // promoted onto device 1
    CHECK(pool(*c, 1)["blocks"] == 2);
  }
  {
    Env env("");  // this process sees no GPU
    auto c = Client::connect(d.socket()).value();
    CHECK(c->gpu_devices().empty());
    auto bad = c->get("m", keys, on_gpu());
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.status().message(),
               Catch::Contains("no GPU tier on any device of this process"));
    auto host = c->get("m", keys).value();  // host memory still serves
    CHECK(host.found() == 2);
  }
}

// Device puts (docs/gpu.md, "Device puts"): a batch staged in device memory.  On the
// emulation the "device" tensors are host memory standing in for it, as for leases.
std::vector<TensorIn> on_device(const HalfBlock& b, int device) {
  std::vector<TensorIn> t = b.tensors;
  for (auto& x : t) x.device = device;
  return t;
}

TEST_CASE("gpu: a device put batch lands in the GPU tier byte-exact, device to device", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("nf4", 16ull << 20));
  ClientOptions o;
  o.socket = d.socket();
  o.device = 0;
  auto c = Client::connect(o).value();
  constexpr size_t kBlocks = 8;
  auto keys = chain("m", kBlocks);
  std::vector<HalfBlock> blocks;
  for (size_t i = 0; i < kBlocks; ++i) blocks.emplace_back(64, 100 + i);
  std::vector<std::vector<TensorIn>> tensors;
  std::vector<PutItem> items;
  for (size_t i = 0; i < kBlocks; ++i) tensors.push_back(on_device(blocks[i], 0));
  for (size_t i = 0; i < kBlocks; ++i) items.push_back(PutItem{keys[i], tensors[i]});
  auto r = c->put_batch("m", items);
  REQUIRE(r);
  for (size_t i = 0; i < kBlocks; ++i) {
    INFO("item " << i << ": " << (*r)[i].to_string());
    CHECK((*r)[i].is_ok());
  }
  CHECK(counter(*c, "gpu_device_puts") == kBlocks);
  CHECK(counter(*c, "gpu_device_put_bytes") == kBlocks * 2 * 64 * 128 * 2);
  CHECK(counter(*c, "gpu_puts") == kBlocks);
  CHECK(pool(*c)["blocks"] == kBlocks);
  auto g = c->get("m", keys, on_gpu()).value();
  for (size_t i = 0; i < kBlocks; ++i) {
    INFO("block " << i);
    REQUIRE(g.block(i).on_gpu);
    CHECK(g.block(i).tensor("k")->codec == Codec::kRaw);  // fp16 as put, in an NF4 namespace
    CHECK(same(read(*g.block(i).tensor("k")), blocks[i].bytes(blocks[i].k)));
    CHECK(same(read(*g.block(i).tensor("v")), blocks[i].bytes(blocks[i].v)));
  }
  // A host get copies down to NF4, as for any GPU block.
  auto h = c->get("m", std::span(keys.data(), 1)).value();
  CHECK(h.block(0).tensor("v")->codec == Codec::kNf4);

  // Blocks are immutable: the same batch again is kAlreadyExists for each item, and a single
  // put() of device tensors takes the same path.
  auto again = c->put_batch("m", items).value();
  for (const Status& st : again) CHECK(st.code() == Errc::kAlreadyExists);
  CHECK(c->put("m", keys[0], tensors[0]).code() == Errc::kAlreadyExists);
  auto more = chain("m", 1, 5000);
  HalfBlock extra(64, 7);
  must(c->put("m", more[0], on_device(extra, 0)));
  CHECK(counter(*c, "gpu_device_puts") == kBlocks + 1);
}

TEST_CASE(
    "gpu: device puts scatter from pieces, take the host path when they must, and stay "
    "within their staging",
    "[gpu]") {
  if (!suite_ready()) return;
  DaemonOptions opts = gpu_daemon("fp16", 16ull << 20);
  opts.extra_toml = "device_staging_bytes = \"1MiB\"\n";
  Daemon d(opts);
  ClientOptions o;
  o.socket = d.socket();
  o.device = 0;
  auto c = Client::connect(o).value();
  auto keys = chain("m", 64);

  SECTION("pieces of a paged cache, out of order: no gather copy, the same bytes") {
    // K of 64 tokens x 128 lives in 4 pages of 16 tokens, stored in the pool in the order
    // 2, 0, 3, 1 (a paged layout); V is contiguous.
    HalfBlock b(64, 31);
    const size_t page = 16 * 128;
    std::vector<_Float16> paged(4 * page);
    const size_t order[4] = {2, 0, 3, 1};  // page p of the tensor sits in slot order[p]
    for (size_t p = 0; p < 4; ++p)
      std::memcpy(paged.data() + order[p] * page, b.k.data() + p * page, page * 2);
    TensorIn k{"k", DType::kF16, {64, 128}, nullptr, Nf4Layout::kColumnBlocks, 0, {}};
    for (size_t p = 0; p < 4; ++p) k.segments.push_back({paged.data() + order[p] * page, page * 2});
    TensorIn v{"v", DType::kF16, {64, 128}, b.v.data(), Nf4Layout::kRowBlocks, 0, {}};
    const std::vector<TensorIn> t{k, v};
    must(c->put("m", keys[0], t));
    auto g = c->get("m", std::span(keys.data(), 1), on_gpu()).value();
    CHECK(same(read(*g.block(0).tensor("k")), b.bytes(b.k)));
    CHECK(same(read(*g.block(0).tensor("v")), b.bytes(b.v)));
    // Pieces that do not add up to the tensor are refused, for that item only.
    TensorIn short_k = k;
    short_k.segments.pop_back();
    const std::vector<TensorIn> bad{short_k, v};
    HalfBlock other(64, 32);
    const auto good = on_device(other, 0);
    const PutItem two[] = {{keys[1], bad}, {keys[2], good}};
    auto r = c->put_batch("m", two).value();
    CHECK(r[0].code() == Errc::kInvalidArgument);
    CHECK_THAT(r[0].message(), Catch::Contains("pieces hold"));
    CHECK(r[1].is_ok());
  }

  SECTION("the device staging comes with a reply whose every item failed: kept for the next") {
    HalfBlock a(64, 51), b(64, 52);
    must(c->put("m", keys[5], a.tensors));  // host path: cached already
    const auto dev_a = on_device(a, 0);
    const auto dev_b = on_device(b, 0);
    const PutItem cached{keys[5], dev_a};
    auto first = c->put_batch("m", std::span(&cached, 1)).value();
    CHECK(first[0].code() == Errc::kAlreadyExists);
    const PutItem fresh{keys[6], dev_b};
    auto second = c->put_batch("m", std::span(&fresh, 1)).value();
    CHECK(second[0].is_ok());
    CHECK(counter(*c, "gpu_device_puts") == 1);
  }

  SECTION("fp32 staged on the device is read back and sealed into the host tier") {
    std::vector<float> f(4096);
    for (size_t i = 0; i < f.size(); ++i) f[i] = float(i) * 0.25f;
    const std::vector<TensorIn> t{
        TensorIn{"x", DType::kF32, {4096}, f.data(), Nf4Layout::kRowBlocks, 0, {}}};
    const PutItem item{keys[3], t};
    auto r = c->put_batch("m", std::span(&item, 1), PutOptions{PutStaging::kDevice, 0}).value();
    REQUIRE(r[0].is_ok());
    CHECK(counter(*c, "gpu_device_puts") == 0);  // not a GPU tier block
    auto h = c->get("m", std::span(keys.data() + 3, 1)).value();
    REQUIRE(h.block(0).found());
    CHECK(!h.block(0).on_gpu);
    CHECK(same(read(*h.block(0).tensor("x")), std::as_bytes(std::span(f))));
  }

  SECTION("host staging, batched: the same bytes") {
    std::vector<HalfBlock> blocks;
    for (size_t i = 0; i < 5; ++i) blocks.emplace_back(64, 40 + i);
    std::vector<PutItem> items;
    for (size_t i = 0; i < 5; ++i) items.push_back(PutItem{keys[10 + i], blocks[i].tensors});
    auto r = c->put_batch("m", items, PutOptions{PutStaging::kHost, -1}).value();
    for (const Status& st : r) CHECK(st.is_ok());
    CHECK(counter(*c, "gpu_device_puts") == 0);
    auto g = c->get("m", std::span(keys.data() + 10, 5), on_gpu()).value();
    for (size_t i = 0; i < 5; ++i)
      CHECK(same(read(*g.block(i).tensor("k")), blocks[i].bytes(blocks[i].k)));
  }

  SECTION("a batch larger than the device staging: the rest is kLimit, the rest stored") {
    // 1 MiB of device staging is a pool of 2 MiB (the allocation granularity): 40 blocks of
    // 64 KiB do not fit.
    std::vector<HalfBlock> blocks;
    for (size_t i = 0; i < 40; ++i) blocks.emplace_back(128, 60 + i);  // 64 KiB each
    std::vector<std::vector<TensorIn>> tensors;
    for (auto& b : blocks) tensors.push_back(on_device(b, 0));
    std::vector<PutItem> items;
    for (size_t i = 0; i < 40; ++i) items.push_back(PutItem{keys[20 + i], tensors[i]});
    auto r = c->put_batch("m", items).value();
    size_t stored = 0, limited = 0;
    for (const Status& st : r) {
      if (st.is_ok()) ++stored;
      if (st.code() == Errc::kLimit) {
        ++limited;
        CHECK_THAT(st.message(), Catch::Contains("device_staging_bytes"));
      }
    }
    CHECK(stored > 0);
    CHECK(limited > 0);
    CHECK(stored + limited == 40);
    // Sealed puts gave their staging back: the rest fits now.
    std::vector<PutItem> rest;
    for (size_t i = 0; i < 40; ++i)
      if (!r[i].is_ok()) rest.push_back(items[i]);
    const std::vector<Status> second = c->put_batch("m", rest).value();
    for (const Status& st : second) CHECK(st.to_string() == "ok");
    auto g = c->get("m", std::span(keys.data() + 20, 40), on_gpu()).value();
    CHECK(g.found() == 40);
    CHECK(same(read(*g.block(39).tensor("k")), blocks[39].bytes(blocks[39].k)));
  }
}

TEST_CASE("gpu: a device put to a daemon without a GPU tier fails clearly", "[gpu]") {
  if (!suite_ready()) return;
  DaemonOptions opts;
  opts.host_bytes = 32ull << 20;
  Daemon d(opts);
  auto c = Client::connect(d.socket()).value();
  HalfBlock b(16, 1);
  auto keys = chain("m", 1);
  const PutItem item{keys[0], b.tensors};
  auto r = c->put_batch("m", std::span(&item, 1), PutOptions{PutStaging::kDevice, 0});
  REQUIRE_FALSE(r);
  CHECK_THAT(r.status().message(), Catch::Contains("no GPU tier"));
  // The connection is still good.
  must(c->put("m", keys[0], b.tensors));
}

TEST_CASE("gpu: a host get of a GPU block while leases fill the host tier says no_space", "[gpu]") {
  if (!suite_ready()) return;
  Daemon d(gpu_daemon("fp16"));  // host tier 32 MiB
  auto c = Client::connect(d.socket()).value();
  auto keys = chain("m", 4096);
  // fp32 blocks take the host path: put and lease 2 MiB, then 4 KiB blocks until the host
  // tier refuses more.
  std::vector<float> f(1 << 19, 0.5f);
  std::vector<Lease> held;
  size_t next = 1;
  for (uint64_t elems : {uint64_t{1} << 19, uint64_t{1} << 10}) {
    for (;;) {
      REQUIRE(next < keys.size());
      Status st = c->put("m", keys[next],
                         std::vector<TensorIn>{TensorIn{"x", DType::kF32, {elems}, f.data()}});
      if (st.code() == Errc::kNoSpace) break;
      must(st);
      held.push_back(c->get("m", std::span(keys.data() + next, 1)).value());
      REQUIRE(held.back().found() == 1);
      ++next;
    }
  }
  HalfBlock b(64, 12);
  must(c->put("m", keys[0], b.tensors));  // fp16: the GPU tier
  auto host = c->get("m", std::span(keys.data(), 1)).value();
  CHECK(host.block(0).code == Errc::kNoSpace);
  auto gpu = c->get("m", std::span(keys.data(), 1), on_gpu()).value();
  REQUIRE(gpu.block(0).on_gpu);  // still cached, and served from the GPU
  CHECK(same(read(*gpu.block(0).tensor("k")), b.bytes(b.k)));
}
