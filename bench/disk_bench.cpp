// disk_bench: the disk tier's write and read throughput (sequential and random, 2 MiB and
// 32 MiB blocks) next to raw O_DIRECT io_uring transfers of the same sizes on the same file
// system in the same run, and the restart (open) time with 100,000 indexed blocks.
//   disk_bench [--quick] [--dir D]   (D defaults to /work/kvtier-disk-bench-<pid>; removed)
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <random>

#include "tiers/disk/disk_tier.h"

using namespace kvtier;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<uint64_t> order(uint64_t n, bool random) {
  std::vector<uint64_t> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = i;
  if (random) std::shuffle(v.begin(), v.end(), std::mt19937_64(42));
  return v;
}

// Raw baseline: one O_DIRECT file, `depth` transfers in flight through io_uring.  Writes end
// with one fdatasync; with sync_every > 0 they also fdatasync after every sync_every bytes
// (waiting for the transfers in flight first), as the tier does once per batch.
double raw_mbps(const std::filesystem::path& file, uint64_t block, uint64_t n, bool write,
                bool random, uint64_t sync_every = 0, unsigned depth = 4) {
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0640);
  if (fd < 0) fd = ::open(file.c_str(), O_RDWR | O_CREAT, 0640);
  io_uring ring;
  io_uring_queue_init(depth * 2, &ring, 0);
  std::vector<AlignedBuffer> bufs;
  for (unsigned i = 0; i < depth; ++i) {
    bufs.emplace_back(block);
    std::memset(bufs.back().data(), int(i + 1), block);
  }
  auto idx = order(n, random);
  auto t0 = Clock::now();
  uint64_t next = 0, done = 0, synced = 0;
  unsigned inflight = 0;
  std::vector<unsigned> free_bufs;
  for (unsigned i = 0; i < depth; ++i) free_bufs.push_back(i);
  while (done < n) {
    while (inflight < depth && next < n) {
      if (write && sync_every && next > synced && (next * block) % sync_every == 0) {
        if (inflight > 0) break;  // the sync covers every write before it: let them finish
        ::fdatasync(fd);
        synced = next;
      }
      unsigned b = free_bufs.back();
      free_bufs.pop_back();
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      if (write)
        io_uring_prep_write(sqe, fd, bufs[b].data(), unsigned(block), idx[next] * block);
      else
        io_uring_prep_read(sqe, fd, bufs[b].data(), unsigned(block), idx[next] * block);
      io_uring_sqe_set_data64(sqe, b);
      ++next;
      ++inflight;
    }
    io_uring_submit(&ring);
    io_uring_cqe* cqe;
    io_uring_wait_cqe(&ring, &cqe);
    free_bufs.push_back(unsigned(io_uring_cqe_get_data64(cqe)));
    io_uring_cqe_seen(&ring, cqe);
    --inflight;
    ++done;
  }
  if (write) ::fdatasync(fd);
  double s = seconds_since(t0);
  io_uring_queue_exit(&ring);
  ::close(fd);
  return double(block * n) / s / 1e6;
}

BlockLayout layout_of(uint64_t bytes) {
  BlockLayout l;
  TensorLayout t;
  t.name = "kv";
  t.dtype = DType::kU8;
  t.shape = {bytes};
  t.bytes = t.raw_bytes = bytes;
  l.tensors.push_back(t);
  l.total_bytes = bytes;
  return l;
}
BlockKey key_of(uint64_t i) {
  return {i * 0x9e3779b97f4a7c15ull + 1, i};
}

// Writes n blocks through the tier, retrying on a full queue; waits until all are durable.
void tier_write(DiskTier& t, uint64_t block, uint64_t n, uint64_t first_key,
                const std::vector<std::byte>& data) {
  for (uint64_t i = 0; i < n; ++i) {
    for (;;) {
      Status s = t.write("bench", key_of(first_key + i), layout_of(block),
                         std::span(data.data(), block), false, {});
      if (s.code() != Errc::kLimit) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  t.flush();
}

double tier_read_mbps(DiskTier& t, uint64_t block, uint64_t n, bool random, unsigned depth = 4) {
  // Page-aligned destinations, as the daemon's host arena hands out; the tier reads straight
  // into them.
  std::vector<AlignedBuffer> bufs;
  for (unsigned i = 0; i < depth; ++i) bufs.emplace_back(block);
  std::vector<DiskEntry> es;
  for (uint64_t i = 0; i < n; ++i) es.push_back(*t.find("bench", key_of(i)));
  auto idx = order(n, random);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<unsigned> free_bufs;
  for (unsigned i = 0; i < depth; ++i) free_bufs.push_back(i);
  uint64_t errors = 0;
  auto t0 = Clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    unsigned b;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !free_bufs.empty(); });
      b = free_bufs.back();
      free_bufs.pop_back();
    }
    t.read(es[idx[i]], bufs[b].span(), [&, b](Status s) {
      std::lock_guard lock(mu);
      if (!s) ++errors;
      free_bufs.push_back(b);
      cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return free_bufs.size() == depth; });
  double s = seconds_since(t0);
  if (errors) std::printf("  (%lu read errors)\n", (unsigned long)errors);
  return double(block * n) / s / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::filesystem::path dir = "/work/kvtier-disk-bench-" + std::to_string(::getpid());
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--dir" && i + 1 < argc)
      dir = argv[++i];
    else {
      std::fprintf(stderr, "usage: disk_bench [--quick] [--dir D]\n");
      return 2;
    }
  }
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const uint64_t total = quick ? (256ull << 20) : (1ull << 30);
  std::vector<std::byte> data(32u << 20);
  std::mt19937_64 rng(1);
  for (auto& b : data) b = std::byte(rng());

  std::printf("disk_bench: %s, %llu MiB per row, 4 transfers in flight\n", dir.c_str(),
              (unsigned long long)(total >> 20));
  std::printf("| test | block | tier MB/s | raw O_DIRECT MB/s | ratio |\n|---|---|---|---|---|\n");
  std::string backend;
  for (uint64_t block : {2ull << 20, 32ull << 20}) {
    const uint64_t n = total / block;
    auto raw = dir / "raw.bin";
    double rw = raw_mbps(raw, block, n, true, false);
    std::filesystem::remove(raw);
    double rws = raw_mbps(raw, block, n, true, false, 32ull << 20);
    double rsr = raw_mbps(raw, block, n, false, false);
    double rrr = raw_mbps(raw, block, n, false, true);
    std::filesystem::remove(raw);

    DiskOptions o;
    o.dir = dir / ("tier-" + std::to_string(block >> 20));
    auto opened = DiskTier::open(o);
    if (!opened) {
      std::fprintf(stderr, "open: %s\n", opened.status().to_string().c_str());
      return 1;
    }
    auto& t = *opened.value();
    backend = t.backend();
    auto t0 = Clock::now();
    tier_write(t, block, n, 0, data);
    double tw = double(block * n) / seconds_since(t0) / 1e6;
    double tsr = tier_read_mbps(t, block, n, false);
    double trr = tier_read_mbps(t, block, n, true);
    const char* mib = block == (2ull << 20) ? "2 MiB" : "32 MiB";
    std::printf(
        "| write (durable, indexed) vs raw, 1 fdatasync at end | %s | %.0f | %.0f | %.0f%% |\n",
        mib, tw, rw, 100 * tw / rw);
    std::printf(
        "| write (durable, indexed) vs raw, fdatasync per 32 MiB | %s | %.0f | %.0f | %.0f%% |\n",
        mib, tw, rws, 100 * tw / rws);
    std::printf("| sequential read | %s | %.0f | %.0f | %.0f%% |\n", mib, tsr, rsr,
                100 * tsr / rsr);
    std::printf("| random read | %s | %.0f | %.0f | %.0f%% |\n", mib, trr, rrr, 100 * trr / rrr);
    opened.value().reset();
    std::filesystem::remove_all(o.dir);
  }
  std::printf("backend: %s\n", backend.c_str());

  // Restart: 100,000 indexed 4 KiB blocks, then time open() to the first served read.
  {
    DiskOptions o;
    o.dir = dir / "restart";
    o.backend = DiskOptions::Backend::kThreads;  // 4 KiB O_DIRECT appends: more in flight
    o.threads = 8;
    const uint64_t n = 100000;
    {
      auto t = std::move(DiskTier::open(o).value());
      auto w0 = Clock::now();
      tier_write(*t, 4096, n, 0, data);
      std::printf("restart: wrote %llu x 4 KiB in %.2f s\n", (unsigned long long)n,
                  seconds_since(w0));
    }
    o.backend = DiskOptions::Backend::kAuto;
    o.threads = 2;
    auto t0 = Clock::now();
    auto t = std::move(DiskTier::open(o).value());
    double open_s = seconds_since(t0);
    std::vector<std::byte> buf(4096);
    std::promise<Status> p;
    auto e = t->find("bench", key_of(n / 2));
    t->read(*e, buf, [&](Status s) { p.set_value(s); });
    bool ok = p.get_future().get().is_ok();
    double first_s = seconds_since(t0);
    std::printf(
        "| restart open, %llu blocks | %.1f ms | first read served at %.1f ms (%s) | goal < 1000 "
        "ms |\n",
        (unsigned long long)t->usage().blocks, open_s * 1e3, first_s * 1e3, ok ? "ok" : "FAILED");
  }
  std::filesystem::remove_all(dir);
  return 0;
}
