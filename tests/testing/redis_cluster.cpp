// The fixture's processes: ports, redis-server start, cluster creation, readiness, teardown.
#include "tests/testing/redis_cluster.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/testing/redis_cluster_internal.h"

extern char** environ;

namespace kvtier::testing {
using namespace redis_fixture;

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Client ports are drawn from [kPortLow, kPortLow + kPortSpan), so that the cluster bus (port
// + 10000) stays below the kernel's ephemeral range (32768 and up): neither can be taken by
// an outgoing connection between the check and redis-server's bind.
constexpr int kPortLow = 20000;
constexpr int kPortSpan = 2700;
constexpr int kBusOffset = 10000;

std::string redis_server() {
  const char* p = std::getenv("REDIS_SERVER");
  return p != nullptr ? p : "/usr/bin/redis-server";
}
std::string redis_cli() {
  const char* p = std::getenv("REDIS_CLI");
  return p != nullptr ? p : "/usr/bin/redis-cli";
}

bool port_free(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

int pick_port() {
  static std::mt19937 rng(static_cast<uint32_t>(::getpid()) * 2654435761u ^
                          static_cast<uint32_t>(Clock::now().time_since_epoch().count()));
  for (int i = 0; i < 1000; ++i) {
    const int port = kPortLow + static_cast<int>(rng() % kPortSpan);
    if (port + kBusOffset < 32768 && port_free(port) && port_free(port + kBusOffset)) return port;
  }
  throw std::runtime_error("redis fixture: no free port pair");
}

std::string tail_of(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  const std::string all = s.str();
  return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
}

}  // namespace

RedisCluster::RedisCluster(RedisClusterOptions options) : options_(std::move(options)) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvtier-redis-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("redis fixture: mkdtemp");
  dir_ = tmpl;
  try {
    nodes_.resize(options_.masters * (1 + options_.replicas));
    for (Node& n : nodes_) start_node(n);
    create_cluster();
    wait_state_ok(30s);
    wait_replicas_synced(30s);
    for (Node& n : nodes_) n.id = run(n.addr, {"CLUSTER", "MYID"}).str;
  } catch (...) {
    for (Node& n : nodes_)
      if (n.alive) kill_node(n.addr);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw;
  }
}

RedisCluster::~RedisCluster() {
  for (Node& n : nodes_) {
    if (!n.alive) continue;
    ::kill(n.pid, SIGKILL);
    ::waitpid(n.pid, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void RedisCluster::start_node(Node& n) {
  const std::string server = redis_server();
  for (int attempt = 0; attempt < 10; ++attempt) {
    n.port = pick_port();
    n.addr = std::string(kHost) + ":" + std::to_string(n.port);
    const std::filesystem::path node_dir = dir_ / std::to_string(n.port);
    std::filesystem::create_directories(node_dir);
    std::vector<std::string> args = {server,
                                     "--port",
                                     std::to_string(n.port),
                                     "--bind",
                                     kHost,
                                     "--dir",
                                     node_dir.string(),
                                     "--logfile",
                                     "redis.log",
                                     "--daemonize",
                                     "no",
                                     "--protected-mode",
                                     "no",
                                     "--cluster-enabled",
                                     "yes",
                                     "--cluster-config-file",
                                     "nodes.conf",
                                     "--cluster-node-timeout",
                                     "1000",
                                     "--cluster-require-full-coverage",
                                     "no",
                                     "--cluster-allow-reads-when-down",
                                     "no",
                                     "--appendonly",
                                     "no",
                                     "--save",
                                     "",
                                     "--repl-diskless-sync-delay",
                                     "0"};
    if (!options_.password.empty()) {
      for (const char* opt : {"--requirepass", "--masterauth"}) {
        args.push_back(opt);
        args.push_back(options_.password);
      }
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    // fork + exec rather than posix_spawn: the child asks for SIGKILL when its parent dies.
    // Between fork and exec it makes only async-signal-safe calls.
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("redis fixture: fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      ::dup2(null, STDERR_FILENO);
      ::execve(argv[0], argv.data(), environ);
      ::_exit(127);
    }
    n.pid = pid;
    n.alive = true;
    // Ready when it answers PING; an exit means the port was taken after all: another one.
    const Clock::time_point until = Clock::now() + 10s;
    while (Clock::now() < until) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) {
        n.alive = false;
        break;
      }
      redisContext* c = redisConnectWithTimeout(kHost, n.port, {0, 200000});
      bool up = false;
      if (c != nullptr && c->err == 0) {
        // PING answers NOAUTH with a password: the server is up all the same.
        auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
        up = r != nullptr;
        if (r != nullptr) freeReplyObject(r);
      }
      if (c != nullptr) redisFree(c);
      if (up) return;
      std::this_thread::sleep_for(20ms);
    }
    if (n.alive) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      n.alive = false;
      throw std::runtime_error("redis fixture: " + n.addr +
                               " did not answer PING: " + tail_of(node_dir / "redis.log"));
    }
  }
  throw std::runtime_error("redis fixture: redis-server did not start on 10 ports in a row");
}

void RedisCluster::create_cluster() {
  std::vector<std::string> args = {redis_cli(), "--cluster", "create"};
  for (const Node& n : nodes_) args.push_back(n.addr);
  args.insert(args.end(),
              {"--cluster-replicas", std::to_string(options_.replicas), "--cluster-yes"});
  if (!options_.password.empty())
    args.insert(args.end(), {"-a", options_.password, "--no-auth-warning"});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const std::string log = (dir_ / "cluster-create.log").string();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("redis fixture: cannot start " + args[0]);
  int status = 0;
  const Clock::time_point until = Clock::now() + 60s;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      throw std::runtime_error("redis fixture: cluster create hung: " + tail_of(log));
    }
    std::this_thread::sleep_for(20ms);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("redis fixture: cluster create failed: " + tail_of(log));
}

// Every live node says cluster_state:ok and serves the same, complete slot map.
void RedisCluster::wait_state_ok(std::chrono::milliseconds limit) const {
  const Clock::time_point until = Clock::now() + limit;
  std::string last;
  while (Clock::now() < until) {
    bool ok = true;
    std::optional<SlotMap> first;
    for (const Node& n : nodes_) {
      if (!n.alive || !ok) continue;
      const std::string state = info_field(run(n.addr, {"CLUSTER", "INFO"}).str, "cluster_state");
      const SlotMap m = slot_map_of(run(n.addr, {"CLUSTER", "SLOTS"}));
      if (state != "ok" || covered(m) != kSlots || (first && *first != m)) {
        ok = false;
        last = n.addr + " cluster_state:" + state;
      }
      if (!first) first = m;
    }
    if (ok) return;
    std::this_thread::sleep_for(50ms);
  }
  throw std::runtime_error("redis fixture: cluster not ok in time: " + last);
}

void RedisCluster::wait_replicas_synced(std::chrono::milliseconds limit) const {
  const Clock::time_point until = Clock::now() + limit;
  for (const Node& n : nodes_) {
    for (;;) {
      const std::string info = run(n.addr, {"INFO", "replication"}).str;
      if (info_field(info, "role") == "master" || info_field(info, "master_link_status") == "up")
        break;
      if (Clock::now() > until)
        throw std::runtime_error("redis fixture: replica " + n.addr + " not in sync");
      std::this_thread::sleep_for(50ms);
    }
  }
}

}  // namespace kvtier::testing
