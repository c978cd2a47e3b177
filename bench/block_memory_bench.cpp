// block_memory_bench: the daemon memory one cached block costs (issue 15, docs/internals.md
// "Memory per block", docs/benchmarks.md).
//
// The real Engine in-process (as engine/tests/engine_ladder_test.cpp builds it), host tier
// only: the disk tier, the GPU tier and the semantic index are off, so every byte measured
// is the engine's and the host tier's bookkeeping.  Tiny blocks go through begin_put + seal:
//   single  one tensor "kv" f16 [2, 16]             (64 B of fp16)
//   k+v     two tensors "k", "v" f16 [1, 16] each   (64 B of fp16)
// in a namespace stored as given (codec fp16).  Each kind runs in its own forked process from
// the same starting point, so neither inherits the other's freed heap.  At each checkpoint
// (100k and 1M blocks; --quick: 2k and 20k) it prints, per block, from a baseline taken after
// the engine opened and 64 warm-up puts:
//   heap      mallinfo2() uordblks + hblkhd (bytes malloc handed out, brk and mmap)
//   anon RSS  /proc/self/statm resident - shared: the process's private pages.  This is the
//             daemon memory of the goal; the arena is shared memory and is not in it
//   shm RSS   statm shared: pages of the host arena the blocks touched (reported apart)
//   arena     the arena's own bytes per block (extent, 64 B alignment, allocator header)
// and the ratio of max(heap, anon RSS) to the goal: a k+v block within 200 B.  Beside them,
// what the host tier says it holds (ArenaTier::memory(): entry, buckets, interned layouts,
// ghost keys), so the measured bytes can be told apart.
//
//   block_memory_bench [--quick] [--blocks N,N...]
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/engine.h"

using namespace kvtier;
using boost::asio::awaitable;

namespace {

constexpr double kGoalBytes = 200;  // per k+v block (issue 15)
constexpr uint64_t kWarmup = 64;

struct Kind {
  const char* name;
  BlockLayout layout;
};

TensorLayout f16_tensor(const char* name, std::vector<uint64_t> shape, uint64_t offset) {
  TensorLayout t;
  t.name = name;
  t.dtype = DType::kF16;
  t.shape = std::move(shape);
  t.offset = offset;
  t.bytes = t.raw_bytes = t.elements() * 2;
  return t;
}

Kind single_kind() {
  Kind k{"single", {}};
  k.layout.tensors.push_back(f16_tensor("kv", {2, 16}, 0));
  k.layout.total_bytes = 64;
  return k;
}

Kind kv_kind() {
  Kind k{"k+v", {}};
  k.layout.tensors.push_back(f16_tensor("k", {1, 16}, 0));
  k.layout.tensors.push_back(f16_tensor("v", {1, 16}, 32));
  k.layout.total_bytes = 64;
  return k;
}

// Chain keys are hash outputs: spread them like one (splitmix64).
BlockKey key_of(uint64_t i) {
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  return BlockKey{mix(i * 2 + 1), mix(i * 2 + 2)};
}

uint64_t heap_bytes() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

struct Rss {
  uint64_t resident = 0;
  uint64_t shared = 0;
};

Rss rss() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0, shared = 0;
  f >> size >> resident >> shared;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return {resident * page, shared * page};
}

struct Sample {
  uint64_t heap = 0;
  Rss rss;
  uint64_t arena_used = 0;  // arena bytes not free (blocks, alignment, allocator headers)
  ArenaTier::MemoryUsage tier;
};

Sample sample(Engine& e) {
  Sample s;
  s.heap = heap_bytes();
  s.rss = rss();
  s.arena_used = e.host().arena().size() - e.host().arena().free_bytes();
  s.tier = e.host().memory();
  return s;
}

// What glibc's malloc takes for a request of `bytes`: an 8-byte size header, 16-byte
// granules, 32 bytes at least.
uint64_t malloc_chunk(uint64_t bytes) {
  return std::max<uint64_t>(32, (bytes + 8 + 15) / 16 * 16);
}

void must(const Status& s, const char* what) {
  if (!s) {
    std::fprintf(stderr, "block_memory_bench: %s: %s\n", what, s.to_string().c_str());
    std::exit(1);
  }
}

// begin_put + seal of `n` blocks from key index `first`.
awaitable<void> put_blocks(Engine& e, uint64_t sid, uint32_t ns, const Kind& kind, uint64_t first,
                           uint64_t n) {
  const std::vector<std::byte> staged(kind.layout.total_bytes, std::byte{0x3c});
  for (uint64_t i = first; i < first + n; ++i) {
    Engine::PutRequest req;
    req.ns = ns;
    req.key = key_of(i);
    req.client_layout = kind.layout;
    Result<uint64_t> id = co_await e.begin_put(sid, std::move(req));
    must(id.status(), "begin_put");
    Result<uint64_t> sealed = co_await e.seal(sid, *id, staged);
    must(sealed.status(), "seal");
  }
}

void run_puts(Engine& e, uint64_t sid, uint32_t ns, const Kind& kind, uint64_t first, uint64_t n) {
  boost::asio::io_context io;
  boost::asio::co_spawn(io, put_blocks(e, sid, ns, kind, first, n), boost::asio::detached);
  io.run();
}

std::string config_text(const std::filesystem::path& dir, const std::string& tag,
                        uint64_t host_mib) {
  return "[daemon]\nstate_dir = \"" + dir.string() + "\"\nshm_prefix = \"kvtier-membench-" + tag +
         "\"\n[host]\nsize = \"" + std::to_string(host_mib) +
         "MiB\"\nprefault = false\n"
         "[disk]\nenabled = false\n[gpu]\nbackend = \"off\"\n[index]\nenabled = false\n"
         "[session]\nstaging_bytes = \"1MiB\"\n"
         "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ndisk = \"off\"\n";
}

// One kind, in this (forked) process: opens the engine, puts up to the last checkpoint and
// prints a row at each.
int measure(const Kind& kind, const std::vector<uint64_t>& checkpoints) {
  spdlog::set_level(spdlog::level::warn);
  const uint64_t most = checkpoints.back();
  // 512 B of arena per block is room to spare (one 64-256 B slot each, plus the allocator's).
  const uint64_t host_mib = std::max<uint64_t>(64, (most + kWarmup) * 512 / (1 << 20) + 64);
  const std::string tag = std::to_string(::getpid());
  const auto dir = std::filesystem::temp_directory_path() / ("kvtier-membench-" + tag);
  std::filesystem::create_directories(dir);
  int rc = 0;
  {
    Metrics metrics;
    auto engine = Engine::open(config::parse(config_text(dir, tag, host_mib)), metrics);
    const uint64_t sid = engine->open_session(PeerInfo{});
    const uint32_t ns = engine->resolve_namespace("membench", {}).value();
    run_puts(*engine, sid, ns, kind, 0, kWarmup);
    const Sample base = sample(*engine);
    uint64_t done = 0;
    for (uint64_t n : checkpoints) {
      const uint64_t t0 = bench::now_ns();
      run_puts(*engine, sid, ns, kind, kWarmup + done, n - done);
      const double put_us = double(bench::now_ns() - t0) / 1e3 / double(n - done);
      done = n;
      const Sample s = sample(*engine);
      const TierUsage u = engine->host().usage();
      if (u.evictions != 0 || u.blocks != n + kWarmup) {
        std::fprintf(stderr, "block_memory_bench: %s: %llu blocks cached, %llu evicted\n",
                     kind.name, (unsigned long long)u.blocks, (unsigned long long)u.evictions);
        rc = 1;
        break;
      }
      const double per = double(n);
      const double heap = double(s.heap - base.heap) / per;
      const double anon =
          (double(s.rss.resident - s.rss.shared) - double(base.rss.resident - base.rss.shared)) /
          per;
      const double shm = (double(s.rss.shared) - double(base.rss.shared)) / per;
      const double arena = double(s.arena_used - base.arena_used) / per;
      const double ratio = std::max(heap, anon) / kGoalBytes;
      // What the tier says it holds, per block: its entry (one malloc chunk), its share of
      // the index's buckets and of the interned layouts.
      const double entry = double(malloc_chunk(s.tier.entry_bytes));
      const double buckets = double(s.tier.bucket_bytes - base.tier.bucket_bytes) / per;
      const double shapes = (double(s.tier.shape_bytes) - double(base.tier.shape_bytes)) / per;
      char entry_col[32];
      std::snprintf(entry_col, sizeof entry_col, "%llu (%.0f)",
                    (unsigned long long)s.tier.entry_bytes, entry);
      std::printf(
          "| %-6s | %9llu | %8.1f | %8.1f | %8.1f | %8.1f | %9.1f | %13s | %7.1f | %2llu, %4.1f | "
          "%6llu | %7.2f | %5.2fx | %-4s |\n",
          kind.name, (unsigned long long)n, heap, anon, shm, arena, entry + buckets + shapes,
          entry_col, buckets, (unsigned long long)s.tier.shapes, shapes,
          (unsigned long long)s.tier.ghosts, put_us, ratio, ratio <= 1.0 ? "yes" : "NO");
      std::fflush(stdout);
    }
  }
  std::filesystem::remove_all(dir);
  return rc;
}

std::vector<uint64_t> parse_list(const std::string& s) {
  std::vector<uint64_t> v;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    v.push_back(std::stoull(s.substr(pos, end - pos)));
    pos = end + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<uint64_t> checkpoints = {100000, 1000000};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      checkpoints = {2000, 20000};
    } else if (a == "--blocks" && i + 1 < argc) {
      checkpoints = parse_list(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: block_memory_bench [--quick] [--blocks N,N...]\n");
      return 2;
    }
  }
  std::sort(checkpoints.begin(), checkpoints.end());
  if (checkpoints.empty() || checkpoints.front() == 0) {
    std::fprintf(stderr, "block_memory_bench: --blocks needs counts > 0\n");
    return 2;
  }
  std::printf(
      "block_memory_bench: daemon memory per cached block; Engine in-process, host tier "
      "only (disk tier, GPU tier and index off), codec fp16, %llu warm-up puts before "
      "the baseline\n",
      (unsigned long long)kWarmup);
  std::printf(
      "single = \"kv\" f16 [2,16]; k+v = \"k\", \"v\" f16 [1,16] each; 64 B of fp16 "
      "per block.  Goal: max(heap, anon RSS) <= %.0f B per k+v block.\n\n",
      kGoalBytes);
  std::printf(
      "| kind   |    blocks |  heap B  | anon RSS | shm RSS  | arena B  | accounted | "
      "entry (chunk) | buckets | shapes, B | ghosts | put us  | vs goal | met? |\n");
  std::printf(
      "|--------|-----------|----------|----------|----------|----------|-----------|"
      "---------------|---------|-----------|--------|---------|---------|------|\n");
  std::fflush(stdout);
  int rc = 0;
  for (const Kind& kind : {single_kind(), kv_kind()}) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) {
      const int child_rc = measure(kind, checkpoints);
      std::fflush(stdout);
      ::_exit(child_rc);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
  }
  std::printf(
      "\nPer block, from the baseline.  heap = mallinfo2 uordblks + hblkhd; anon RSS = statm "
      "resident - shared (the daemon's private memory: the goal); shm RSS = host-arena pages "
      "touched (shared memory, reported apart); arena = arena bytes the allocator counts as used "
      "(extent + header; the 64 B alignment gap between slots shows in shm RSS).  accounted = "
      "what the host tier says it holds (ArenaTier::memory): entry = sizeof one block's entry "
      "(its glibc malloc chunk), buckets = the index's bucket array, shapes = distinct interned "
      "layouts and their heap; ghosts = S3-FIFO ghost keys (bounded; none without "
      "evictions).\n");
  return rc;
}
