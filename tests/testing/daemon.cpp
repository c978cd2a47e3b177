#include "tests/testing/daemon.h"

#include <signal.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <thread>

namespace kvtier::testing {
namespace {

bool can_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

std::atomic<int> g_counter{0};

}  // namespace

std::string kvtierd_path(bool test_build) {
  if (const char* env = std::getenv(test_build ? "KVTIERD_TEST" : "KVTIERD")) return env;
#ifdef KVTIER_BINARY_DIR
  return std::string(KVTIER_BINARY_DIR) + (test_build ? "/tests/kvtierd_test" : "/daemon/kvtierd");
#else
  return test_build ? "kvtierd_test" : "kvtierd";
#endif
}

Daemon::Daemon(DaemonOptions o) {
  const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(g_counter++);
  dir_ = std::filesystem::temp_directory_path() / ("kvtier-test-" + tag);
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_);
  env_ = o.env;
  test_build_ = o.test_build;
  socket_ = (dir_ / "kvtier.sock").string();
  shm_prefix_ = o.shm_prefix.empty() ? "kvtier-test-" + tag : o.shm_prefix;
  {
    std::ofstream cfg(dir_ / "kvtier.toml");
    cfg << "[daemon]\n"
        << "socket = \"" << socket_ << "\"\n"
        << "state_dir = \"" << (dir_ / "state").string() << "\"\n"
        << "shm_prefix = \"" << shm_prefix_ << "\"\n"
        << "io_threads = " << o.io_threads << "\n"
        << "busy_poll_us = " << o.busy_poll_us << "\n"
        << "request_channel = " << (o.request_channel ? "true" : "false") << "\n"
        << "lookup_index = " << (o.lookup_index ? "true" : "false") << "\n"
        << "lookup_index_slots = " << o.lookup_index_slots << "\n"
        << "max_message_bytes = " << o.max_message_bytes << "\n"
        << "log_level = \"" << o.log_level << "\"\n"
        << "drain_timeout_ms = 2000\n"
        << "[host]\n"
        << "size = " << o.host_bytes << "\n"
        << "prefault = " << (o.prefault ? "true" : "false") << "\n"
        << "[disk]\n"
        << "enabled = " << (o.disk ? "true" : "false") << "\n"
        << "size = " << o.disk_bytes << "\n"
        << "region_bytes = " << o.region_bytes << "\n"
        << "io_backend = \"" << o.disk_backend << "\"\n"
        << "[gpu]\n"
        << "backend = \"" << o.gpu_backend << "\"\n"
        << "size = " << o.gpu_bytes << "\n"
        << "devices = " << o.gpu_devices << "\n"
        << "[session]\n"
        << "staging_bytes = " << o.staging_bytes << "\n"
        << o.extra_toml << "\n";
    if (o.extra_toml.find("[[namespace]]") == std::string::npos)
      cfg << "[[namespace]]\nprefix = \"\"\ncodec = \"" << o.codec << "\"\n";
  }
  start();
}

void Daemon::start() {
  const std::string bin = kvtierd_path(test_build_);
  const std::string cfg = (dir_ / "kvtier.toml").string();
  const std::string log = (dir_ / "kvtierd.log").string();
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 2);
      ::close(fd);
    }
    for (const auto& [name, value] : env_) ::setenv(name.c_str(), value.c_str(), 1);
    ::execl(bin.c_str(), bin.c_str(), "--config", cfg.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!can_connect(socket_)) {
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream in(log);
      std::string text((std::istreambuf_iterator<char>(in)), {});
      throw std::runtime_error("kvtierd exited at start: " + text);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
      throw std::runtime_error("kvtierd did not start within 20 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void Daemon::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

void Daemon::restart() {
  stop();
  start();
}

bool Daemon::running() const {
  return pid_ > 0 && ::kill(pid_, 0) == 0;
}

int Daemon::stop() {
  if (pid_ <= 0) return 0;
  ::kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 1000; ++i) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return -SIGKILL;
}

Daemon::~Daemon() {
  // A daemon that died under a test leaves its log on stderr before the directory goes.
  int status = 0;
  if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    std::ifstream in(dir_ / "kvtierd.log");
    std::cerr << "kvtierd (pid exited, status " << status << ") log:\n" << in.rdbuf() << "\n";
  }
  stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace kvtier::testing
