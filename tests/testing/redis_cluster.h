// A real Redis Cluster for tests: redis-server 7 processes (/usr/bin/redis-server, or
// $REDIS_SERVER) in cluster mode on free loopback ports, in a private temporary directory,
// joined with `redis-cli --cluster create`.  The destructor kills them and removes the
// directory.  Failures to start, and helpers that cannot do what they say within their bound,
// throw std::runtime_error (a test fails, it does not hang).
//
// The nodes run with cluster-node-timeout 1000 ms (a failover takes about 2-3 s),
// cluster-require-full-coverage no (a master lost takes only its own slots down, as a cache
// wants) and cluster-allow-reads-when-down no, no persistence.
//
// The servers are children of the constructing thread and get SIGKILL when it exits
// (PR_SET_PDEATHSIG), so a crashed test leaves no redis-server behind: construct the fixture
// on a thread that outlives it (the test's main thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvtier::testing {

struct RedisClusterOptions {
  uint32_t masters = 3;   // redis-cli wants at least 3
  uint32_t replicas = 0;  // per master
  std::string password;   // requirepass and masterauth on every node when not empty
};

// A reply of run(): hiredis's reply, copied.
struct RedisValue {
  enum class Type { kNil, kString, kStatus, kInteger, kArray, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  long long integer = 0;
  std::vector<RedisValue> elements;
};

class RedisCluster {
 public:
  explicit RedisCluster(RedisClusterOptions options = {});
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  // "127.0.0.1:port" of every node started, masters and replicas, in start order.
  std::vector<std::string> seeds() const;
  // The master serving `slot`, as a live node's CLUSTER SLOTS says.
  std::string master_of_slot(uint16_t slot) const;
  // The masters that serve slots, as a live node's CLUSTER SLOTS says.
  std::vector<std::string> masters() const;
  // A node's cluster id (CLUSTER MYID, read at start).
  const std::string& node_id(const std::string& addr) const;

  // One command on a fresh connection to `addr` (AUTH first when there is a password).
  // Throws when the node cannot be reached; a Redis error is a RedisValue of kError.
  RedisValue run(const std::string& addr, const std::vector<std::string>& argv) const;

  // SIGKILL, then reaps it.  The node is dead from then on (never restarted).
  void kill_node(const std::string& addr);
  // SIGSTOP / SIGCONT: a node that accepts connections and answers nothing.
  void pause_node(const std::string& addr);
  void resume_node(const std::string& addr);
  // Waits until a replica of `old_master` (killed) serves all of its slots and every live
  // node says cluster_state:ok; throws after `limit`.
  void wait_failover(const std::string& old_master,
                     std::chrono::milliseconds limit = std::chrono::seconds(20));

  // Resharding as the specification describes it: SETSLOT IMPORTING on `to`, MIGRATING on
  // `from`, MIGRATE of every key, SETSLOT NODE on every master.
  void migrate_slot(uint16_t slot, const std::string& from, const std::string& to);
  // The same, stopped half-way: the slot is MIGRATING at `from` and IMPORTING at `to`, and
  // of its keys exactly `keys` (which must be in `slot`) have moved.
  void begin_migration(uint16_t slot, const std::string& from, const std::string& to);
  void move_keys(const std::string& from, const std::string& to,
                 const std::vector<std::string>& keys);
  // SETSLOT NODE `to` on every live master (moving any keys left first).
  void finish_migration(uint16_t slot, const std::string& from, const std::string& to);

  const std::filesystem::path& dir() const { return dir_; }

 private:
  struct Node {
    std::string addr;
    int port = 0;
    pid_t pid = -1;
    std::string id;
    bool alive = false;
  };
  Node& node(const std::string& addr);
  const Node& node(const std::string& addr) const;
  void start_node(Node& n);
  void create_cluster();
  void wait_state_ok(std::chrono::milliseconds limit) const;
  void wait_replicas_synced(std::chrono::milliseconds limit) const;
  std::string any_live_node() const;
  void check_ok(const RedisValue& v, const std::string& what) const;

  RedisClusterOptions options_;
  std::filesystem::path dir_;
  std::vector<Node> nodes_;
};

}  // namespace kvtier::testing
