// lookup_bench: a lookup of 1 key and of a 32-key chain answered from the daemon's shared
// lookup index, through the shared-memory request channel, and through the socket, against a
// bare read of 32 words of shared memory, in one run against one daemon (docs/benchmarks.md).
// Usage: lookup_bench [--quick]
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using namespace kvtier::bench;

namespace {

template <typename F>
Latency time_loop(int iters, int warmup, F&& f) {
  for (int i = 0; i < warmup; ++i) f(i);
  std::vector<uint64_t> samples(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    const uint64_t t0 = now_ns();
    f(i);
    samples[size_t(i)] = now_ns() - t0;
  }
  return summarize(samples);
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r) throw std::runtime_error(std::string(what) + ": " + r.status().message());
  return std::move(r).value();
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int iters = quick ? 2000 : 50000;
  const uint64_t blocks = 1024;
  constexpr size_t kChain = 32;

  testing::DaemonOptions opt;
  opt.busy_poll_us = 200;  // so that the channel client gets a request channel
  opt.disk = false;
  testing::Daemon daemon(opt);
  const std::string ns = "bench/lookup";

  ClientOptions co;
  co.socket = daemon.socket();
  co.lookup_index = true;
  auto index_client = must(Client::connect(co), "connect");
  co.lookup_index = false;
  auto socket_client = must(Client::connect(co), "connect");
  co.busy_poll_us = 200;
  co.request_channel = true;
  auto channel_client = must(Client::connect(co), "connect");
  if (!channel_client->uses_request_channel()) throw std::runtime_error("no request channel");

  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < blocks; ++i) keys.push_back(BlockKey{i * 0x9E3779B97F4A7C15ull + 1, i});
  for (const BlockKey& k : keys)
    if (Status st = index_client->put(ns, k, testing::KvBlock(k, 4).tensors); !st)
      throw std::runtime_error("put: " + st.message());
  if (!index_client->uses_lookup_index(ns)) throw std::runtime_error("no lookup index");

  const size_t windows = blocks - kChain;
  auto row = [&](Client& c, size_t len) {
    return time_loop(iters, 500, [&](int i) {
      const size_t at = (size_t(i) * 7919) % (len == 1 ? blocks : windows);
      if (must(c.lookup(ns, std::span(&keys[at], len)), "lookup") != len)
        throw std::runtime_error("lookup missed a stored key");
    });
  };
  // The baseline: 32 words of a shared mapping read with acquire loads, as the index reader's
  // seqlock reads them (one word per key, 32 bytes apart).
  const size_t shm_bytes = 1 << 20;
  int fd = ::memfd_create("lookup-bench", MFD_CLOEXEC);
  if (fd < 0 || ::ftruncate(fd, shm_bytes) != 0) throw std::runtime_error("memfd");
  auto* words = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, shm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  const size_t nwords = shm_bytes / 8;
  auto bare = [&](size_t len) {
    return time_loop(iters, 500, [&](int i) {
      uint64_t s = 0;
      size_t at = (size_t(i) * 7919 * 4) % nwords;
      for (size_t k = 0; k < len; ++k)
        s += words[(at + k * 4) % nwords].load(std::memory_order_acquire);
      do_not_optimize(s);
    });
  };

  struct Row {
    const char* name;
    Latency one, chain;
  };
  std::vector<Row> rows = {
      {"shared index", row(*index_client, 1), row(*index_client, kChain)},
      {"request channel", row(*channel_client, 1), row(*channel_client, kChain)},
      {"socket", row(*socket_client, 1), row(*socket_client, kChain)},
      {"bare shm read", bare(1), bare(kChain)},
  };
  std::printf("lookup_bench: %llu blocks cached, %d lookups per row, unpinned (2 vCPUs here)\n\n",
              (unsigned long long)blocks, iters);
  std::printf("%-16s %11s %11s %13s %13s %14s\n", "path", "1 key p50", "1 key p99", "32-key p50",
              "32-key p99", "32-key vs index");
  for (const Row& r : rows)
    std::printf("%-16s %9.3f us %9.3f us %11.3f us %11.3f us %13.1fx\n", r.name, r.one.p50_us,
                r.one.p99_us, r.chain.p50_us, r.chain.p99_us,
                r.chain.p50_us / rows[0].chain.p50_us);
  std::printf("\nindex lookups need no daemon CPU: the daemon counted %s lookups\n",
              "only the channel and socket rows'");
  ::munmap(words, shm_bytes);
  ::close(fd);
  return 0;
}
