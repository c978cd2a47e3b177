#include "bench/bench_util.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

namespace kvtier::bench {
namespace {

// Reads or writes exactly n bytes; false on EOF or error.
// With poll_us > 0 the read polls (non-blocking reads, yielding the CPU in between) for up
// to that long before it blocks, as kvtierd and libkvtier do with busy polling on.
bool read_full(int fd, void* buf, size_t n, uint32_t poll_us = 0) {
  auto* p = static_cast<char*>(buf);
  const uint64_t until = poll_us ? now_ns() + uint64_t(poll_us) * 1000 : 0;
  while (n > 0) {
    const bool poll = poll_us && now_ns() < until;
    ssize_t r = ::recv(fd, p, n, poll ? MSG_DONTWAIT : 0);
    if (r < 0 && poll && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      sched_yield();
      continue;
    }
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool write_full(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// A page-aligned private buffer, every page touched.
struct Buffer {
  explicit Buffer(size_t bytes) : size(bytes) {
    void* p = nullptr;
    if (::posix_memalign(&p, 4096, std::max<size_t>(bytes, 64)) != 0) throw std::bad_alloc();
    data.reset(static_cast<std::byte*>(p));
    std::memset(data.get(), 0x5a, bytes);  // touches every page
  }
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte[], Free> data;
  size_t size;
};

}  // namespace

Latency summarize(std::vector<uint64_t>& s) {
  Latency l;
  l.n = s.size();
  if (s.empty()) return l;
  std::sort(s.begin(), s.end());
  auto rank = [&](double q) {
    size_t i = static_cast<size_t>(q * double(s.size()));
    return double(s[std::min(i, s.size() - 1)]) / 1000.0;
  };
  l.p50_us = rank(0.50);
  l.p99_us = rank(0.99);
  l.max_us = double(s.back()) / 1000.0;
  double sum = 0;
  for (uint64_t v : s) sum += double(v);
  l.mean_us = sum / double(s.size()) / 1000.0;
  return l;
}

uint64_t read_sum(const void* data, size_t bytes) {
  // Four independent accumulators so the loop is bound by memory, not by an add chain.
  const auto* p = static_cast<const uint64_t*>(data);
  const size_t n = bytes / 8;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a + b + c + d;
}

namespace {

// The source slots of a pool: `bytes` each, ceil(pool_bytes / bytes) of them (at least one).
size_t pool_slots(size_t bytes, size_t pool_bytes) {
  return pool_bytes > bytes ? (pool_bytes + bytes - 1) / bytes : 1;
}

}  // namespace

double memcpy_gbps(size_t bytes, int iters, size_t pool_bytes) {
  const size_t slots = pool_slots(bytes, pool_bytes);
  Buffer src(bytes * slots), dst(bytes);
  std::memcpy(dst.data.get(), src.data.get(), bytes);
  uint64_t t0 = now_ns();
  for (int i = 0; i < iters; ++i) {
    std::memcpy(dst.data.get(), src.data.get() + (size_t(i) % slots) * bytes, bytes);
    do_not_optimize(dst.data[size_t(i) % bytes]);
  }
  return gbps(bytes * uint64_t(iters), now_ns() - t0);
}

double read_sum_gbps(size_t bytes, int iters, size_t pool_bytes) {
  const size_t slots = pool_slots(bytes, pool_bytes);
  Buffer buf(bytes * slots);
  uint64_t sink = read_sum(buf.data.get(), bytes);
  uint64_t t0 = now_ns();
  for (int i = 0; i < iters; ++i)
    sink += read_sum(buf.data.get() + (size_t(i) % slots) * bytes, bytes);
  uint64_t dt = now_ns() - t0;
  do_not_optimize(sink);
  return gbps(bytes * uint64_t(iters), dt);
}

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::kScheduler:
      return "unpinned";
    case Placement::kSameCpu:
      return "1 CPU";
    case Placement::kTwoCpus:
      return "2 CPUs";
  }
  return "?";
}

std::optional<CpuPair> placement_cpus(Placement p) {
  const int self = ::sched_getcpu();
  switch (p) {
    case Placement::kScheduler:
      return CpuPair{};
    case Placement::kSameCpu:
      return CpuPair{self, self};
    case Placement::kTwoCpus: {
      cpu_set_t allowed = get_affinity();
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (c != self && CPU_ISSET(c, &allowed)) return CpuPair{self, c};
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<Latency> socket_pingpong(int iters, size_t msg_bytes, Placement placement, int warmup,
                                       uint32_t poll_us) {
  AffinityGuard guard;
  auto cpus = placement_cpus(placement);
  if (!cpus) return std::nullopt;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw std::runtime_error("socketpair failed");
  std::vector<char> msg(msg_bytes, 'x');
  pid_t child = ::fork();
  if (child < 0) throw std::runtime_error("fork failed");
  if (child == 0) {  // echo until EOF
    if (cpus->peer >= 0) set_affinity(0, single_cpu(cpus->peer));
    ::close(sv[0]);
    while (read_full(sv[1], msg.data(), msg.size(), poll_us) &&
           write_full(sv[1], msg.data(), msg.size())) {
    }
    ::_exit(0);
  }
  if (cpus->self >= 0) set_affinity(0, single_cpu(cpus->self));
  ::close(sv[1]);
  const int fd = sv[0];
  std::vector<uint64_t> samples;
  samples.reserve(static_cast<size_t>(iters));
  bool ok = true;
  for (int i = 0; i < warmup + iters && ok; ++i) {
    uint64_t t0 = now_ns();
    ok = write_full(fd, msg.data(), msg.size()) && read_full(fd, msg.data(), msg.size(), poll_us);
    if (i >= warmup) samples.push_back(now_ns() - t0);
  }
  ::close(fd);
  ::waitpid(child, nullptr, 0);
  if (!ok) throw std::runtime_error("ping-pong peer failed");
  return summarize(samples);
}

cpu_set_t get_affinity(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ::sched_getaffinity(tid, sizeof(set), &set);
  return set;
}

bool set_affinity(pid_t tid, const cpu_set_t& set) {
  return ::sched_setaffinity(tid, sizeof(set), &set) == 0;
}

cpu_set_t single_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu < 0 ? 0 : cpu, &set);
  return set;
}

int set_process_affinity(pid_t pid, const cpu_set_t& set) {
  int n = 0;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    pid_t tid = static_cast<pid_t>(std::atoi(e.path().filename().c_str()));
    if (tid > 0 && set_affinity(tid, set)) ++n;
  }
  return n;
}

std::string size_name(uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0)
    return std::to_string(bytes >> 30) + " GiB";
  if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0)
    return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= (1ull << 10) && bytes % (1ull << 10) == 0)
    return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

int free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

}  // namespace kvtier::bench
