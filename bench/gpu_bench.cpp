// gpu_bench: the GPU tier through the daemon (docs/gpu.md, docs/benchmarks.md).
//
//   promotion  host NF4 -> GPU fp16: GPU gets of blocks only the host tier holds (the device
//              dequantizes straight from the shared arena), GB/s of fp16 produced
//   demotion   GPU fp16 -> host NF4: host gets of blocks only the GPU holds (the device
//              quantizes into the arena: the work of an eviction), GB/s of fp16 consumed
//   lease      get + release of one GPU block, p50/p99, next to the same for a host block
// Baselines in the same run: the CPU NF4 codec on the same tensors (what the emulation's
// "device" runs, so daemon/bare is the tier's overhead) and a Unix-socket ping-pong.
// On the host emulation the figures measure the tier logic and the CPU codec, not PCIe or
// HBM; on a GPU host compare with the link and memory bandwidth (docs/gpu.md).
//
//   gpu_bench [--backend emulation|cuda] [--blocks N] [--quick]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
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

void must(const Status& s, const char* what) {
  if (!s) {
    std::fprintf(stderr, "gpu_bench: %s: %s\n", what, s.to_string().c_str());
    std::exit(1);
  }
}

// The CPU codec over every block (the same bytes the daemon moves, so as cold in the caches),
// both directions, GB/s of fp16 (median of `iters`).
std::pair<double, double> cpu_codec_gbps(const std::vector<Block>& blocks, int iters) {
  const uint64_t rows = kTokens, cols = 128;
  const uint64_t kq = nf4_encoded_size(DType::kF16, Nf4Layout::kColumnBlocks, false, rows, cols);
  const uint64_t vq = nf4_encoded_size(DType::kF16, Nf4Layout::kRowBlocks, false, rows, cols);
  std::vector<std::vector<std::byte>> ek(blocks.size(), std::vector<std::byte>(kq)),
      ev(blocks.size(), std::vector<std::byte>(vq));
  std::vector<std::byte> out(blocks.size() * rows * cols * 2 * 2);
  std::vector<uint64_t> q_ns, d_ns;
  for (int i = 0; i < iters; ++i) {
    uint64_t t0 = now_ns();
    for (size_t b = 0; b < blocks.size(); ++b) {
      must(nf4_quantize(DType::kF16, Nf4Layout::kColumnBlocks, false, rows, cols,
                        std::as_bytes(std::span(blocks[b].k)), ek[b]),
           "quantize");
      must(nf4_quantize(DType::kF16, Nf4Layout::kRowBlocks, false, rows, cols,
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

uint64_t counter(Client& c, const char* name) {
  return nlohmann::json::parse(c.stats_json().value())["counters"][name].get<uint64_t>();
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
  if (backend.empty()) backend = gpu::make_cuda_backend() ? "cuda" : "emulation";
  const int rounds = quick ? 1 : 5;
  const int lease_iters = quick ? 50 : 2000;

  std::vector<Block> blocks;
  for (int i = 0; i < nblocks; ++i) blocks.emplace_back(1000 + i);
  const uint64_t block_bytes = blocks[0].bytes();

  testing::DaemonOptions o;
  o.gpu_backend = backend;
  o.gpu_bytes = (nblocks + 8) * block_bytes + (8ull << 20);
  o.host_bytes = (nblocks + 8) * block_bytes / 2 + (64ull << 20);
  o.staging_bytes = 16ull << 20;
  o.codec = "nf4";
  o.disk = false;
  testing::Daemon daemon(o);
  auto client = Client::connect(daemon.socket());
  if (!client) must(client.status(), "connect");
  Client& c = **client;

  std::printf(
      "gpu_bench: backend %s%s, %d blocks of %s fp16 (K [%llu,128] per channel, V per "
      "token), namespace codec nf4\n",
      backend.c_str(),
      backend == "emulation"
          ? " (HOST EMULATION: shared host memory stands in for the GPU; the device "
            "kernels run as the CPU codec; no PCIe or HBM involved)"
          : "",
      nblocks, size_name(block_bytes).c_str(), (unsigned long long)kTokens);

  const std::string ns = "bench/gpu";
  std::vector<uint32_t> tokens(nblocks * 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i + 1);
  auto keys = chain_keys(ns, tokens, 16);
  for (int i = 0; i < nblocks; ++i) must(c.put(ns, keys[i], blocks[i].tensors), "put");

  // Demotion: host gets of GPU-only blocks (quantize on the device into the arena).
  std::vector<uint64_t> demote_ns, promote_ns;
  for (int r = 0; r < rounds; ++r) {
    (void)c.evict(ns, {}, false, TierSel::kHost).value();
    uint64_t t0 = now_ns();
    auto lease = c.get(ns, keys);
    uint64_t t1 = now_ns();
    if (!lease || lease->found() != static_cast<size_t>(nblocks)) must(lease.status(), "get host");
    demote_ns.push_back(t1 - t0);
    // Promotion: GPU gets of host-only blocks (dequantize on the device from the arena).
    lease->release().is_ok();
    (void)c.evict(ns, {}, false, TierSel::kGpu).value();
    uint64_t t2 = now_ns();
    auto g = c.get(ns, keys, GetOptions{true, -1});
    uint64_t t3 = now_ns();
    if (!g) must(g.status(), "get gpu");
    size_t on_gpu = 0;
    for (const auto& b : g->blocks()) on_gpu += b.on_gpu;
    if (on_gpu != static_cast<size_t>(nblocks)) {
      std::fprintf(stderr, "gpu_bench: only %zu of %d blocks promoted\n", on_gpu, nblocks);
      return 1;
    }
    promote_ns.push_back(t3 - t2);
  }
  std::sort(demote_ns.begin(), demote_ns.end());
  std::sort(promote_ns.begin(), promote_ns.end());
  const uint64_t total = block_bytes * nblocks;
  const double demote = gbps(total, demote_ns[demote_ns.size() / 2]);
  const double promote = gbps(total, promote_ns[promote_ns.size() / 2]);
  auto [cpu_q, cpu_d] = cpu_codec_gbps(blocks, rounds);

  // Lease latency: one GPU block, and one host block of the same size, get + release.
  auto lease_latency = [&](GetOptions opt, const BlockKey& key) {
    std::vector<uint64_t> s;
    for (int i = 0; i < lease_iters; ++i) {
      uint64_t t0 = now_ns();
      auto l = c.get(ns, std::span(&key, 1), opt);
      if (!l || l->found() != 1) must(l.status(), "lease");
      l->release().is_ok();
      s.push_back(now_ns() - t0);
    }
    return summarize(s);
  };
  Latency gpu_lease = lease_latency(GetOptions{true, -1}, keys[0]);
  (void)c.get(ns, std::span(keys.data() + 1, 1)).value();  // a host copy of block 1
  Latency host_lease = lease_latency(GetOptions{}, keys[1]);
  auto ping = socket_pingpong(lease_iters, 64, Placement::kScheduler, quick ? 10 : 1000);

  std::printf("\n%-34s %12s %12s %8s\n", "operation", "daemon", "bare", "ratio");
  std::printf("%-34s %9.2f GB/s %9.2f GB/s %7.2fx   (bare: CPU NF4 dequantize)\n",
              "promotion host NF4 -> GPU fp16", promote, cpu_d, promote / cpu_d);
  std::printf("%-34s %9.2f GB/s %9.2f GB/s %7.2fx   (bare: CPU NF4 quantize)\n",
              "demotion GPU fp16 -> host NF4", demote, cpu_q, demote / cpu_q);
  std::printf("%-34s %9.1f us   %9.1f us   %7.2fx   (vs host lease of the same block)\n",
              "GPU lease get+release p50", gpu_lease.p50_us, host_lease.p50_us,
              gpu_lease.p50_us / host_lease.p50_us);
  std::printf("%-34s %9.1f us   %9.1f us\n", "GPU / host lease p99", gpu_lease.p99_us,
              host_lease.p99_us);
  if (ping)
    std::printf("%-34s %9.1f us   (Unix socket round trip, 64 bytes)\n", "socket ping-pong p50",
                ping->p50_us);
  std::printf("\ncounters: gpu_promotions %llu, gpu_copy_downs %llu, gpu_get_hits %llu\n",
              (unsigned long long)counter(c, "gpu_promotions"),
              (unsigned long long)counter(c, "gpu_copy_downs"),
              (unsigned long long)counter(c, "gpu_get_hits"));
  return 0;
}
