// NF4 throughput on one core next to memcpy measured in the same run.
// Figures are GB/s of fp16 data: quantize reads it, dequantize writes it.
// Goal (docs/nf4.md): dequantize >= 1/2 of memcpy, quantize >= 1/4.
//
//   nf4_bench [--quick]      --quick: fewer repetitions (for smoke tests)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_device.h"
#include "kernels/nf4_internal.h"

namespace {

using namespace kvtier;
using Clock = std::chrono::steady_clock;

double g_min_seconds = 0.3;  // per measurement, split into kRounds timed rounds
constexpr int kRounds = 9;

// Best-of-kRounds bytes/second of fn, each round long enough to be measurable.
double rate(size_t bytes, const std::function<void()>& fn) {
  fn();  // warm caches and page tables
  auto t0 = Clock::now();
  fn();
  double once = std::chrono::duration<double>(Clock::now() - t0).count();
  int reps = std::max(1, static_cast<int>(g_min_seconds / kRounds / std::max(once, 1e-7)));
  double best = 0;
  for (int round = 0; round < kRounds; ++round) {
    auto start = Clock::now();
    for (int i = 0; i < reps; ++i) fn();
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, static_cast<double>(bytes) * reps / s);
  }
  return best / 1e9;
}

void check(const Status& st) {
  if (!st) {
    std::fprintf(stderr, "nf4_bench: %s\n", st.to_string().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--quick") == 0) g_min_seconds = 0.02;
  std::printf("nf4_bench: one core, fp16 input, 128 columns; encode/decode use CPU path %s\n\n",
              nf4::active_cpu_path());
  std::printf(
      "| size | path | layout | memcpy GB/s | quantize GB/s | q/memcpy | dequantize GB/s | "
      "dq/memcpy |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---:|\n");
  struct Variant {
    const char* path;
    Nf4Layout layout;
    bool dq;
    const char* name;
  };
  std::vector<Variant> variants;
  for (const char* path : {"avx512", "avx2"}) {
    bool ok = std::strcmp(path, "avx512") == 0 ? nf4::avx512::supported() : nf4::avx2::supported();
    if (!ok) continue;
    variants.push_back({path, Nf4Layout::kRowBlocks, false, "per-token"});
    variants.push_back({path, Nf4Layout::kColumnBlocks, false, "per-channel"});
    variants.push_back({path, Nf4Layout::kRowBlocks, true, "per-token+dq"});
  }
  variants.push_back({"scalar", Nf4Layout::kRowBlocks, false, "per-token"});
  for (size_t mib : {2, 32}) {
    const size_t bytes = mib << 20, n = bytes / 2, cols = 128;
    std::vector<uint16_t> src(n), copy(n), out(n);
    std::mt19937 rng(1);
    std::normal_distribution<float> dist;
    for (auto& h : src) h = nf4::dev::f32_to_f16(dist(rng));
    for (const Variant& v : variants) {
      // memcpy next to each row, so a change in machine load between rows moves both.
      double memcpy_gbs = rate(bytes, [&] { std::memcpy(copy.data(), src.data(), bytes); });
      nf4::Params p{DType::kF16, v.layout, v.dq, n / cols, cols};
      std::vector<std::byte> enc(nf4::encoded_size(p));
      auto in = std::as_bytes(std::span(src));
      auto dst = std::as_writable_bytes(std::span(out));
      double q = rate(bytes, [&] { check(nf4::encode_with(v.path, p, in, enc)); });
      double d = rate(bytes, [&] { check(nf4::decode_with(v.path, enc, DType::kF16, dst)); });
      std::printf("| %zu MiB | %s | %s | %.1f | %.1f | %.2f | %.1f | %.2f |\n", mib, v.path, v.name,
                  memcpy_gbs, q, q / memcpy_gbs, d, d / memcpy_gbs);
    }
  }
  return 0;
}
