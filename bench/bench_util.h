// Helpers shared by the programs under bench/: clocks, latency percentiles, and the
// baselines every benchmark should print next to its own figures (memcpy and read-sum
// bandwidth, Unix-socket ping-pong), measured in the same run on the same machine.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvtier::bench {

inline uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// Keeps the compiler from discarding a computed value.
template <typename T>
inline void do_not_optimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

// Latency summary of a set of samples, in micro-seconds.
struct Latency {
  size_t n = 0;
  double p50_us = 0;
  double p99_us = 0;
  double mean_us = 0;
  double max_us = 0;
};

// Sorts `samples_ns` in place.  Nearest-rank percentiles; zeros for an empty set.
Latency summarize(std::vector<uint64_t>& samples_ns);

// Bytes per nano-second == GB/s (10^9 bytes per second).
inline double gbps(uint64_t bytes, uint64_t ns) {
  return ns ? double(bytes) / double(ns) : 0.0;
}

// Sums `bytes` (a multiple of 8) as 64-bit words: reads every byte once.
uint64_t read_sum(const void* data, size_t bytes);

// Bandwidth of copying `bytes` from private, pre-touched memory into one private buffer,
// `iters` times.  With pool_bytes > bytes the source cycles through a pool of that many bytes
// (so each copy reads memory that is not in the CPU caches); otherwise it is one buffer
// (cache-hot when `bytes` fits in cache).  GB/s over the timed copies.
double memcpy_gbps(size_t bytes, int iters, size_t pool_bytes = 0);
// Bandwidth of read_sum over private, pre-touched memory; pool_bytes as for memcpy_gbps.
double read_sum_gbps(size_t bytes, int iters, size_t pool_bytes = 0);

// Where the two ends of a request/response pair run.
enum class Placement {
  kScheduler,  // not pinned: wherever the scheduler puts them
  kSameCpu,    // both pinned to the CPU the caller runs on
  kTwoCpus,    // caller pinned to its CPU, the peer to another allowed CPU
};
const char* placement_name(Placement p);  // "unpinned", "1 CPU", "2 CPUs"

// The CPUs a placement pins the caller and the peer to (-1 = not pinned), from the CPU the
// caller runs on now and its allowed set.  nullopt when kTwoCpus has only one CPU to use.
struct CpuPair {
  int self = -1;
  int peer = -1;
};
std::optional<CpuPair> placement_cpus(Placement p);

// Round-trip latency of a `msg_bytes` message over a Unix stream socketpair between this
// process and a forked child that echoes it back, placed as `placement` says (this process's
// affinity is restored afterwards).  `warmup` untimed round trips first.  nullopt when the
// placement is impossible here.  poll_us > 0: both ends poll that long before blocking in
// a read (the baseline for daemon.busy_poll_us).
std::optional<Latency> socket_pingpong(int iters, size_t msg_bytes, Placement placement,
                                       int warmup = 1000, uint32_t poll_us = 0);

// CPU affinity of a thread or process (0 = the calling thread).
cpu_set_t get_affinity(pid_t tid = 0);
bool set_affinity(pid_t tid, const cpu_set_t& set);
cpu_set_t single_cpu(int cpu);
// Sets the affinity of every thread of process `pid` (from /proc/<pid>/task); returns the
// number of threads changed.
int set_process_affinity(pid_t pid, const cpu_set_t& set);

// Restores the calling thread's affinity on destruction.
class AffinityGuard {
 public:
  AffinityGuard() : saved_(get_affinity()) {}
  ~AffinityGuard() { set_affinity(0, saved_); }
  AffinityGuard(const AffinityGuard&) = delete;
  AffinityGuard& operator=(const AffinityGuard&) = delete;

 private:
  cpu_set_t saved_;
};

// "64 KiB", "2 MiB", "32 MiB".
std::string size_name(uint64_t bytes);

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
int free_tcp_port();

}  // namespace kvtier::bench
