// gpu_bench: the GPU tier through the daemon, each figure next to the limit it is bounded by,
// measured in the same run (docs/gpu.md, "Benchmark"; docs/benchmarks.md).
//
//   promotion  host NF4 -> GPU fp16: GPU gets of blocks only the host tier holds (the device
//              dequantizes straight from the shared arena); GB/s of NF4 bytes read, against
//              H2D from pinned host memory, and GB/s of fp16 produced
//   demotion   GPU fp16 -> host NF4: host gets of blocks only the GPU holds (the device
//              quantizes into the arena: the work of an eviction); GB/s of NF4 bytes written,
//              against D2H to pinned host memory
//   lease      get + release of one GPU block, p50/p99, against a Unix-socket ping-pong and a
//              host lease of the same block; then both again through the shared-memory
//              request channel (a second daemon that busy-polls)
// Limits, measured with the backend itself on a pool of the bench's own (the daemon's pool is
// on the same device): pool writes from and reads into a registered (on CUDA: pinned) host
// buffer of the NF4 bytes a promotion moves, a device-to-device copy between the halves of
// the pool, and the socket ping-pong.  On the host emulation every limit is a memcpy (host
// memory stands in for the device), and the emulation's "device" is the CPU codec, so the
// codec over the same blocks is printed as well: daemon/codec is the tier's overhead there.
// No figure is checked against its goal here: the bench prints, CTest only runs --quick.
//
//   gpu_bench [--backend emulation|cuda] [--blocks N] [--quick]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"
#include "tiers/gpu/device_backend.h"

using namespace kvtier;
using namespace kvtier::bench;

namespace {

constexpr uint64_t kTokens = 4096;  // [4096, 128] fp16 K and V: 2 MiB of fp16 per block
// The second daemon's and its clients' polling window (daemon.busy_poll_us,
// ClientOptions::busy_poll_us), micro-seconds: what opens a request channel.
constexpr uint32_t kBusyPollUs = 200;
struct Block {
  std::vector<uint16_t> k, v;
  std::vector<TensorIn> tensors;
  explicit Block(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.f, 1.f);
    k.resize(kTokens * 128);
    v.resize(kTokens * 128);
    auto fill = [&](std::vector<uint16_t>& t) {
      for (auto& x : t) {
        _Float16 h = static_cast<_Float16>(n(rng));
        std::memcpy(&x, &h, 2);
      }
    };
    fill(k);
    fill(v);
    tensors = {TensorIn{"k", DType::kF16, {kTokens, 128}, k.data(), Nf4Layout::kColumnBlocks},
               TensorIn{"v", DType::kF16, {kTokens, 128}, v.data()}};
  }
  uint64_t bytes() const { return (k.size() + v.size()) * 2; }
};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "gpu_bench: %s\n", what.c_str());
  std::exit(1);
}

void must(const Status& s, const char* what) {
  if (!s) fail(std::string(what) + ": " + s.to_string());
}

// The CPU codec over every block (the same bytes the daemon moves, so as cold in the caches),
// both directions, GB/s of fp16 (median of `iters`).
// The namespace's format: double quantization on, as the daemon's default.
std::pair<double, double> cpu_codec_gbps(const std::vector<Block>& blocks, int iters) {
  const uint64_t rows = kTokens, cols = 128;
  const uint64_t kq = nf4_encoded_size(DType::kF16, Nf4Layout::kColumnBlocks, true, rows, cols);
  const uint64_t vq = nf4_encoded_size(DType::kF16, Nf4Layout::kRowBlocks, true, rows, cols);
  std::vector<std::vector<std::byte>> ek(blocks.size(), std::vector<std::byte>(kq)),
      ev(blocks.size(), std::vector<std::byte>(vq));
  std::vector<std::byte> out(blocks.size() * rows * cols * 2 * 2);
  std::vector<uint64_t> q_ns, d_ns;
  for (int i = 0; i < iters; ++i) {
    uint64_t t0 = now_ns();
    for (size_t b = 0; b < blocks.size(); ++b) {
      must(nf4_quantize(DType::kF16, Nf4Layout::kColumnBlocks, true, rows, cols,
                        std::as_bytes(std::span(blocks[b].k)), ek[b]),
           "quantize");
      must(nf4_quantize(DType::kF16, Nf4Layout::kRowBlocks, true, rows, cols,
                        std::as_bytes(std::span(blocks[b].v)), ev[b]),
           "quantize");
    }
    uint64_t t1 = now_ns();
    const uint64_t half = rows * cols * 2;
    for (size_t b = 0; b < blocks.size(); ++b) {
      must(nf4_dequantize(ek[b], DType::kF16, std::span(out).subspan(2 * b * half, half)),
           "dequantize");
      must(nf4_dequantize(ev[b], DType::kF16, std::span(out).subspan((2 * b + 1) * half, half)),
           "dequantize");
    }
    uint64_t t2 = now_ns();
    q_ns.push_back(t1 - t0);
    d_ns.push_back(t2 - t1);
  }
  std::sort(q_ns.begin(), q_ns.end());
  std::sort(d_ns.begin(), d_ns.end());
  const uint64_t total = blocks[0].bytes() * blocks.size();
  return {gbps(total, q_ns[q_ns.size() / 2]), gbps(total, d_ns[d_ns.size() / 2])};
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r) must(r.status(), what);
  return std::move(r).value();
}

uint64_t counter(Client& c, const char* name) {
  return nlohmann::json::parse(c.stats_json().value())["counters"].value(name, uint64_t{0});
}

// "27.0 MiB": size_name() prints sizes that are not a whole number of MiB in bytes.
std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1ull << 20));
  return buf;
}

uint64_t median(std::vector<uint64_t> samples) {
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// What the daemon's figures are bounded by, measured with the backend itself.
struct Limits {
  double h2d_gbps = 0;   // pool->write from a registered (CUDA: pinned) host buffer
  double d2h_gbps = 0;   // pool->read into that buffer
  double copy_gbps = 0;  // pool->copy_from between the two halves of the pool
  uint64_t pool_bytes = 0;
};

// `link_bytes` (the NF4 bytes a promotion reads) each way over the link, and `copy_bytes`
// device to device, on a pool of the bench's own; medians of `iters` after one untimed
// round (the first touch of the pages).
Limits measure_limits(const std::string& backend_name, uint64_t link_bytes, uint64_t copy_bytes,
                      int iters) {
  constexpr uint64_t kStep = 2ull << 20;  // the emulation's and legacy IPC's granularity
  const uint64_t half = (std::max(link_bytes, copy_bytes) + kStep - 1) / kStep * kStep;
  Limits l;
  l.pool_bytes = 2 * half;
  // Declared before the backend, which keeps it pinned (CUDA) until it is destroyed.
  std::vector<std::byte> host(link_bytes);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>(i * 131);
  std::unique_ptr<gpu::DeviceBackend> backend;
  gpu::HandleType handle = gpu::HandleType::kMemfd;
  if (backend_name == "cuda") {
    backend = must(gpu::make_cuda_backend(), "cuda backend");
    handle =
        backend->probe().devices.at(0).vmm ? gpu::HandleType::kVmmFd : gpu::HandleType::kCudaIpc;
  } else {
    backend = gpu::make_emulation_backend(1, l.pool_bytes);
  }
  must(backend->register_host(host), "register_host");
  auto pool = must(backend->create_pool(0, l.pool_bytes, handle), "limit pool");
  std::vector<uint64_t> w, r, c;
  for (int i = 0; i <= iters; ++i) {
    const uint64_t t0 = now_ns();
    must(pool->write(0, host), "pool write");
    const uint64_t t1 = now_ns();
    must(pool->read(0, host), "pool read");
    const uint64_t t2 = now_ns();
    must(pool->copy_from(*pool, 0, half, copy_bytes), "pool copy");
    const uint64_t t3 = now_ns();
    if (i == 0) continue;
    w.push_back(t1 - t0);
    r.push_back(t2 - t1);
    c.push_back(t3 - t2);
  }
  l.h2d_gbps = gbps(link_bytes, median(w));
  l.d2h_gbps = gbps(link_bytes, median(r));
  l.copy_gbps = gbps(copy_bytes, median(c));
  return l;
}

// get + release of one block, `iters` times.
Latency lease_latency(Client& c, const std::string& ns, const BlockKey& key, GetOptions opt,
                      int iters) {
  std::vector<uint64_t> s;
  for (int i = 0; i < iters; ++i) {
    const uint64_t t0 = now_ns();
    auto l = must(c.get(ns, std::span(&key, 1), opt), "lease");
    if (l.found() != 1) fail("lease: block not found");
    l.release().is_ok();
    s.push_back(now_ns() - t0);
  }
  return summarize(s);
}

struct ChannelLeases {
  bool channel = false;           // Client::uses_request_channel()
  uint64_t channel_requests = 0;  // the daemon's counter, over the GPU leases
  Latency gpu, host;
};

// GPU and host leases through the shared-memory request channel: a daemon of its own that
// busy-polls (so that the socket rows above are not measured against a polling daemon) and a
// polling client.
ChannelLeases channel_leases(const std::string& backend, const std::vector<Block>& blocks,
                             const std::string& ns, const std::vector<BlockKey>& keys, int iters) {
  testing::DaemonOptions o;
  o.gpu_backend = backend;
  o.gpu_bytes = 4 * blocks[0].bytes() + (8ull << 20);
  o.host_bytes = 64ull << 20;
  o.staging_bytes = 16ull << 20;
  o.codec = "nf4";
  o.disk = false;
  o.busy_poll_us = kBusyPollUs;
  o.request_channel = true;
  testing::Daemon daemon(o);
  ClientOptions co;
  co.socket = daemon.socket();
  co.busy_poll_us = kBusyPollUs;
  co.request_channel = true;
  auto client = must(Client::connect(co), "connect (channel)");
  Client& c = *client;
  for (int i = 0; i < 2; ++i) must(c.put(ns, keys[i], blocks[i].tensors), "put (channel)");
  // First leases: the pool and arena maps come over the socket, and block 1 gets a host copy.
  must(c.get(ns, std::span(keys.data(), 1), GetOptions{true, -1}), "get gpu (channel)");
  must(c.get(ns, std::span(keys.data() + 1, 1)), "get host (channel)");
  ChannelLeases r;
  r.channel = c.uses_request_channel();
  const uint64_t before = counter(c, "channel_requests");
  r.gpu = lease_latency(c, ns, keys[0], GetOptions{true, -1}, iters);
  r.channel_requests = counter(c, "channel_requests") - before;
  r.host = lease_latency(c, ns, keys[1], GetOptions{}, iters);
  return r;
}

struct Contention {
  Latency idle, busy;       // one connection's host lease get + release
  uint64_t copy_downs = 0;  // GPU evictions copied down while the other connection put
  uint64_t unlocked = 0;    // of them, copied after the engine lock was released
  uint64_t puts = 0;
};

// What a GPU eviction's copy down costs other connections: one connection leases a host
// block (get + release, which takes the engine lock) while another puts fresh fp16 blocks
// into a full pool, so that every put evicts a GPU-only block and copies it down (a
// quantization on the device).  The same leases with the other connection idle, in the same
// daemon, are the baseline.
Contention lease_during_evictions(const std::string& backend, const std::vector<Block>& blocks,
                                  const std::vector<uint32_t>& tokens, int rounds, int iters) {
  const uint64_t bb = blocks[0].bytes();
  testing::DaemonOptions o;
  o.gpu_backend = backend;
  o.gpu_bytes = 4 * bb;  // from the fifth put on, each one evicts
  o.host_bytes = 64ull << 20;
  o.staging_bytes = 16ull << 20;
  o.codec = "nf4";
  o.disk = false;
  testing::Daemon daemon(o);
  auto reader = must(Client::connect(daemon.socket()), "connect (reader)");
  auto writer = must(Client::connect(daemon.socket()), "connect (writer)");
  const std::string rns = "bench/gpu-reader";
  const BlockKey rkey =
      chain_keys(rns, std::vector<uint32_t>(tokens.begin(), tokens.begin() + 16), 16)[0];
  must(reader->put(rns, rkey, blocks[0].tensors), "put (reader)");
  // A host copy of the reader's block, leased for the whole run: evictions pass it by.
  auto hold = must(reader->get(rns, std::span(&rkey, 1)), "get host (reader)");
  if (hold.found() != 1) fail("reader: block not found");
  Contention r;
  r.idle = lease_latency(*reader, rns, rkey, GetOptions{}, iters);
  const uint64_t copies0 = counter(*writer, "gpu_demotions");
  const uint64_t unlocked0 = counter(*writer, "gpu_demotions_unlocked");
  std::atomic<bool> stop{false};
  std::vector<uint64_t> busy;
  std::thread t([&] {
    while (!stop.load()) {
      const uint64_t t0 = now_ns();
      auto l = must(reader->get(rns, std::span(&rkey, 1)), "lease (reader)");
      if (l.found() != 1) fail("reader: block not found");
      l.release().is_ok();
      busy.push_back(now_ns() - t0);
    }
  });
  for (int round = 0; round < rounds; ++round) {
    const std::string wns = "bench/gpu-writer-" + std::to_string(round);
    auto wkeys = chain_keys(wns, tokens, 16);
    for (size_t i = 0; i < blocks.size(); ++i, ++r.puts)
      must(writer->put(wns, wkeys[i], blocks[i].tensors), "put (writer)");
  }
  stop = true;
  t.join();
  r.busy = summarize(busy);
  r.copy_downs = counter(*writer, "gpu_demotions") - copies0;
  r.unlocked = counter(*writer, "gpu_demotions_unlocked") - unlocked0;
  return r;
}

// One row of the table: the daemon's figure, the limit it is compared with (limit <= 0:
// none) and what that limit is.
void row(const char* op, double daemon, double limit, bool us, const std::string& note) {
  const char* unit = us ? "us  " : "GB/s";
  if (limit > 0) {
    std::printf("%-44s %9.2f %s %9.2f %s %7.2fx   %s\n", op, daemon, unit, limit, unit,
                daemon / limit, note.c_str());
  } else {
    std::printf("%-44s %9.2f %s %14s %8s   %s\n", op, daemon, unit, "-", "", note.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string backend;
  int nblocks = 48;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--backend" && i + 1 < argc) {
      backend = argv[++i];
    } else if (a == "--blocks" && i + 1 < argc) {
      nblocks = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: gpu_bench [--backend emulation|cuda] [--blocks N] [--quick]\n");
      return 2;
    }
  }
  if (quick) nblocks = 4;
  if (nblocks < 2) {
    std::fprintf(stderr, "gpu_bench: --blocks must be at least 2\n");
    return 2;
  }
  if (backend.empty()) backend = gpu::make_cuda_backend() ? "cuda" : "emulation";
  if (backend != "cuda" && backend != "emulation") {
    std::fprintf(stderr, "gpu_bench: --backend is emulation or cuda\n");
    return 2;
  }
  const bool emulation = backend == "emulation";
  const int rounds = quick ? 1 : 5;
  const int lease_iters = quick ? 50 : 2000;

  std::vector<Block> blocks;
  for (int i = 0; i < nblocks; ++i) blocks.emplace_back(1000 + i);
  const uint64_t block_bytes = blocks[0].bytes();
  const uint64_t total = block_bytes * nblocks;

  const std::string ns = "bench/gpu";
  std::vector<uint32_t> tokens(nblocks * 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i + 1);
  auto keys = chain_keys(ns, tokens, 16);

  std::printf(
      "gpu_bench: backend %s%s, %d blocks of %s fp16 (K [%llu,128] per channel, V per "
      "token), namespace codec nf4\n",
      backend.c_str(),
      emulation ? " (HOST EMULATION: shared host memory stands in for the GPU; the device "
                  "kernels run as the CPU codec; no PCIe or HBM involved)"
                : "",
      nblocks, size_name(block_bytes).c_str(), (unsigned long long)kTokens);

  // The daemon through the socket: promotion, demotion, leases.
  uint64_t nf4_total = 0;  // NF4 bytes stored for all blocks (the host leases' tensor bytes)
  std::vector<uint64_t> demote_ns, promote_ns;
  Latency gpu_lease, host_lease;
  uint64_t promotions = 0, copy_downs = 0, gpu_hits = 0, device_puts = 0;
  std::vector<uint64_t> device_put_ns, host_put_ns, single_put_ns;
  {
    testing::DaemonOptions o;
    o.gpu_backend = backend;
    o.gpu_bytes = (nblocks + 8) * block_bytes + (8ull << 20);
    o.host_bytes = (nblocks + 8) * block_bytes / 2 + (64ull << 20);
    o.staging_bytes = std::min(std::max<uint64_t>(16ull << 20, total + (8ull << 20)), o.host_bytes);
    o.extra_toml = "device_staging_bytes = " + std::to_string(total + (8ull << 20)) + "\n";
    o.codec = "nf4";
    o.disk = false;
    testing::Daemon daemon(o);
    auto client = must(Client::connect(daemon.socket()), "connect");
    Client& c = *client;
    for (int i = 0; i < nblocks; ++i) must(c.put(ns, keys[i], blocks[i].tensors), "put");

    for (int r = 0; r < rounds; ++r) {
      // Demotion: host gets of GPU-only blocks (quantize on the device into the arena).
      (void)c.evict(ns, {}, false, TierSel::kHost).value();
      const uint64_t t0 = now_ns();
      auto lease = must(c.get(ns, keys), "get host");
      const uint64_t t1 = now_ns();
      if (lease.found() != static_cast<size_t>(nblocks)) fail("get host: blocks not found");
      demote_ns.push_back(t1 - t0);
      if (r == 0)
        for (const auto& b : lease.blocks())
          for (const auto& t : b.tensors) nf4_total += t.bytes;
      lease.release().is_ok();
      // Promotion: GPU gets of host-only blocks (dequantize on the device from the arena).
      (void)c.evict(ns, {}, false, TierSel::kGpu).value();
      const uint64_t t2 = now_ns();
      auto g = must(c.get(ns, keys, GetOptions{true, -1}), "get gpu");
      const uint64_t t3 = now_ns();
      size_t on_gpu = 0;
      for (const auto& b : g.blocks()) on_gpu += b.on_gpu;
      if (on_gpu != static_cast<size_t>(nblocks)) {
        std::fprintf(stderr, "gpu_bench: only %zu of %d blocks promoted\n", on_gpu, nblocks);
        return 1;
      }
      promote_ns.push_back(t3 - t2);
    }
    // Lease latency: one GPU block, and one host block of the same size, get + release.
    gpu_lease = lease_latency(c, ns, keys[0], GetOptions{true, -1}, lease_iters);
    must(c.get(ns, std::span(keys.data() + 1, 1)), "get host");  // a host copy of block 1
    host_lease = lease_latency(c, ns, keys[1], GetOptions{}, lease_iters);

    // Puts into the GPU tier: a batch from device memory (device staging, device to device),
    // the same batch from host memory (host staging, H2D at seal), and one put() per block.
    // The device sources are a pool of the bench's own, filled with the blocks.
    {
      std::unique_ptr<gpu::DeviceBackend> be =
          emulation ? gpu::make_emulation_backend(1, total + (4ull << 20))
                    : must(gpu::make_cuda_backend(), "cuda backend");
      auto src =
          must(be->create_pool(0, total,
                               emulation ? gpu::HandleType::kMemfd : gpu::HandleType::kCudaIpc),
               "source pool");
      std::vector<std::vector<TensorIn>> dev_tensors(nblocks);
      for (int i = 0; i < nblocks; ++i) {
        const uint64_t at = uint64_t(i) * block_bytes;
        must(src->write(at, std::as_bytes(std::span(blocks[i].k))), "source k");
        must(src->write(at + block_bytes / 2, std::as_bytes(std::span(blocks[i].v))), "source v");
        dev_tensors[i] = blocks[i].tensors;
        dev_tensors[i][0].data = reinterpret_cast<const void*>(src->base() + at);
        dev_tensors[i][1].data = reinterpret_cast<const void*>(src->base() + at + block_bytes / 2);
        for (auto& t : dev_tensors[i]) t.device = 0;
      }
      const std::string pns = "bench/gpu-put";
      auto pkeys = chain_keys(pns, tokens, 16);
      std::vector<PutItem> dev_items, host_items;
      for (int i = 0; i < nblocks; ++i) {
        dev_items.push_back(PutItem{pkeys[i], dev_tensors[i]});
        host_items.push_back(PutItem{pkeys[i], blocks[i].tensors});
      }
      auto all_ok = [&](const std::vector<Status>& r, const char* what) {
        for (const Status& st : r) must(st, what);
      };
      // One untimed round first: the staging areas' pages are touched the first time.
      for (int r = 0; r <= rounds; ++r) {
        if (r == 1) device_put_ns.clear(), host_put_ns.clear(), single_put_ns.clear();
        (void)c.remove(pns, pkeys).value();
        uint64_t t0 = now_ns();
        all_ok(must(c.put_batch(pns, dev_items, PutOptions{PutStaging::kDevice, 0}), "put_batch"),
               "device put");
        device_put_ns.push_back(now_ns() - t0);
        (void)c.remove(pns, pkeys).value();
        t0 = now_ns();
        all_ok(must(c.put_batch(pns, host_items, PutOptions{PutStaging::kHost, 0}), "put_batch"),
               "host put");
        host_put_ns.push_back(now_ns() - t0);
        (void)c.remove(pns, pkeys).value();
        t0 = now_ns();
        for (int i = 0; i < nblocks; ++i) must(c.put(pns, pkeys[i], blocks[i].tensors), "put");
        single_put_ns.push_back(now_ns() - t0);
      }
      device_puts = counter(c, "gpu_device_puts");
    }
    promotions = counter(c, "gpu_promotions");
    copy_downs = counter(c, "gpu_copy_downs");
    gpu_hits = counter(c, "gpu_get_hits");
  }
  const uint64_t demote_t = median(demote_ns), promote_t = median(promote_ns);
  ChannelLeases ch = channel_leases(backend, blocks, ns, keys, lease_iters);
  const Contention busy = lease_during_evictions(backend, blocks, tokens, rounds, lease_iters);

  // The limits, in the same run.
  const Limits lim = measure_limits(backend, nf4_total, total, quick ? 3 : 20);
  auto ping = socket_pingpong(lease_iters, 64, Placement::kScheduler, quick ? 10 : 1000);
  const double ping_us = ping ? ping->p50_us : 0;
  double cpu_q = 0, cpu_d = 0;
  if (emulation) std::tie(cpu_q, cpu_d) = cpu_codec_gbps(blocks, rounds);

  std::printf("NF4 stored: %s for %s of fp16 (%.3f of the fp16 bytes)\n", mib(nf4_total).c_str(),
              mib(total).c_str(), double(nf4_total) / double(total));
  std::printf(
      "\nlimits, measured in this run with the %s backend on a %s pool of the bench's own%s\n",
      backend.c_str(), mib(lim.pool_bytes).c_str(),
      emulation ? " (EMULATION: each limit is a memcpy, host memory standing in for the "
                  "device, not PCIe or HBM)"
                : "");
  std::printf("  %-42s %9.2f GB/s   (pool write of the %s of NF4 from a registered host buffer)\n",
              "H2D from pinned host memory", lim.h2d_gbps, mib(nf4_total).c_str());
  std::printf("  %-42s %9.2f GB/s   (pool read of the same bytes into it)\n",
              "D2H to pinned host memory", lim.d2h_gbps);
  std::printf("  %-42s %9.2f GB/s   (copy_from between the pool's halves, %s)\n", "device memcpy",
              lim.copy_gbps, mib(total).c_str());
  std::printf("  %-42s %9.2f us     (Unix socket round trip, 64 bytes)\n", "socket ping-pong p50",
              ping_us);

  std::printf("\n%-44s %14s %14s %8s\n", "operation", "daemon", "limit", "ratio");
  row("promotion host NF4 -> GPU fp16, NF4 read", gbps(nf4_total, promote_t), lim.h2d_gbps, false,
      "vs H2D pinned (goal >= 0.8x)");
  row("  the same, fp16 produced", gbps(total, promote_t), cpu_d, false,
      emulation ? "vs CPU NF4 dequantize (the emulation's device)" : "");
  row("demotion GPU fp16 -> host NF4, NF4 written", gbps(nf4_total, demote_t), lim.d2h_gbps, false,
      "vs D2H pinned (goal >= 0.8x)");
  row("  the same, fp16 consumed", gbps(total, demote_t), cpu_q, false,
      emulation ? "vs CPU NF4 quantize (the emulation's device)" : "");
  row("GPU lease get+release p50, socket", gpu_lease.p50_us, ping_us, true,
      "vs socket ping-pong p50 (goal <= 1.5x)");
  row("GPU lease get+release p50, socket", gpu_lease.p50_us, host_lease.p50_us, true,
      "vs host lease p50, block of the same size");
  row("GPU lease get+release p99, socket", gpu_lease.p99_us, host_lease.p99_us, true,
      "vs host lease p99");
  row("device put batch, fp16 -> GPU tier", gbps(total, median(device_put_ns)), lim.copy_gbps,
      false, "vs device memcpy (goal >= 0.5x)");
  row("host put batch, fp16 -> GPU tier", gbps(total, median(host_put_ns)), lim.h2d_gbps, false,
      "vs H2D pinned (host staging, H2D at seal)");
  row("host put() per block, fp16 -> GPU tier", gbps(total, median(single_put_ns)),
      gbps(total, median(host_put_ns)), false, "vs the host put batch");
  const char* path = ch.channel ? "channel" : "socket (no channel)";
  row((std::string("GPU lease get+release p50, ") + path).c_str(), ch.gpu.p50_us, ch.host.p50_us,
      true, "vs host lease p50, same path (goal <= 1.0x)");
  row((std::string("GPU lease get+release p99, ") + path).c_str(), ch.gpu.p99_us, ch.host.p99_us,
      true, "vs host lease p99, same path");
  row("host lease p50 while GPU puts evict", busy.busy.p50_us, busy.idle.p50_us, true,
      "vs the same lease with the other connection idle");
  row("host lease p99 while GPU puts evict", busy.busy.p99_us, busy.idle.p99_us, true,
      "vs the same, idle");
  std::printf(
      "\neviction rows: a third daemon with a pool of 4 blocks; one connection leases a host "
      "block (%zu leases) while another puts %llu fresh blocks (each evicts one once the pool "
      "is full): %llu copy downs, %llu of them after the engine lock was released\n",
      busy.busy.n, (unsigned long long)busy.puts, (unsigned long long)busy.copy_downs,
      (unsigned long long)busy.unlocked);
  std::printf(
      "\nchannel rows: a second daemon, daemon.busy_poll_us = %u, client busy_poll_us = %u: "
      "%s (channel_requests +%llu over %d GPU leases)\n",
      kBusyPollUs, kBusyPollUs,
      ch.channel ? "Client::uses_request_channel() is true, requests took the request channel"
                 : "NO request channel: the rows measure the socket with polling",
      (unsigned long long)ch.channel_requests, lease_iters);
  std::printf(
      "counters: gpu_promotions %llu, gpu_copy_downs %llu, gpu_get_hits %llu, gpu_device_puts "
      "%llu\n",
      (unsigned long long)promotions, (unsigned long long)copy_downs, (unsigned long long)gpu_hits,
      (unsigned long long)device_puts);
  return 0;
}
