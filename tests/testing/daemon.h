// Starts a real kvtierd for integration tests and benchmarks: a private socket, state
// directory and shared-memory name per instance, so several can run at once.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace kvtier::testing {

struct DaemonOptions {
  uint64_t host_bytes = 64ull << 20;
  uint64_t staging_bytes = 16ull << 20;
  uint32_t io_threads = 2;
  uint32_t busy_poll_us = 0;              // daemon.busy_poll_us
  bool request_channel = true;            // daemon.request_channel
  bool lookup_index = true;               // daemon.lookup_index
  uint64_t lookup_index_slots = 1 << 16;  // daemon.lookup_index_slots
  uint64_t max_message_bytes = 4ull << 20;
  bool prefault = false;
  // Codec of the catch-all namespace rule the fixture writes, unless extra_toml brings its
  // own [[namespace]] rules.  Tests that compare bytes exactly use the lossless "fp16".
  std::string codec = "fp16";
  std::string extra_toml;  // appended verbatim (e.g. [[namespace]] rules, [access])
  std::string log_level = "warn";
  // The disk tier, small and in the daemon's own directory.
  bool disk = true;
  uint64_t disk_bytes = 256ull << 20;
  uint64_t region_bytes = 8ull << 20;
  std::string disk_backend = "auto";  // auto | io_uring | threads
  // The GPU tier: "off" unless a test asks ("emulation", or "cuda" in tests/gpu/).
  std::string gpu_backend = "off";
  uint64_t gpu_bytes = 32ull << 20;
  std::string gpu_devices = "[0]";
  // daemon.shm_prefix; empty: a private one per instance.
  std::string shm_prefix;
  // Extra environment for the daemon process (e.g. KVTIER_TEST_DISK_FAULTS).
  std::vector<std::pair<std::string, std::string>> env;
  // Start the test build of the daemon (kvtierd_test: tests/testing/kvtierd_test_main.cpp),
  // which reads the KVTIER_TEST_* hooks from its environment; kvtierd ignores them.
  bool test_build = false;
};

class Daemon {
 public:
  // Writes a config, starts kvtierd (path from $KVTIERD or the build tree) and waits until
  // its socket accepts connections.  Throws std::runtime_error if it does not start.
  explicit Daemon(DaemonOptions options = {});
  ~Daemon();  // SIGTERM, wait; SIGKILL after 10 s
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& socket() const { return socket_; }
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& shm_prefix() const { return shm_prefix_; }
  pid_t pid() const { return pid_; }
  // Sends SIGTERM and waits; returns the exit status (or -signal).
  int stop();
  // SIGKILL, no drain: what a crash looks like to the state directory.
  void kill9();
  // Starts kvtierd again on the same configuration and state directory.
  void restart();
  // The environment for the next (re)start.
  void set_env(std::vector<std::pair<std::string, std::string>> env) { env_ = std::move(env); }
  bool running() const;
  std::filesystem::path state_dir() const { return dir_ / "state"; }

 private:
  void start();
  std::filesystem::path dir_;
  std::string socket_;
  std::string shm_prefix_;
  std::vector<std::pair<std::string, std::string>> env_;
  bool test_build_ = false;
  pid_t pid_ = -1;
};

// The kvtierd binary of this build ($KVTIERD), or its test build kvtierd_test ($KVTIERD_TEST).
std::string kvtierd_path(bool test_build = false);

}  // namespace kvtier::testing
