// Internal: the Cluster's state, shared by redis_cluster.cpp (connect, Reply), cluster_nodes.cpp
// (pool, slot map refresh) and cluster_execute.cpp (routing, pipelines, redirects).
//
// Threads: any number of callers run execute() at once.  mu_ guards the slot map, the node
// table and the pools and is never held across network I/O; refresh_mu_ lets one caller at a
// time reload the map (the others go on with the map they have).  Lock order: refresh_mu_,
// then mu_.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/mutex.h"
#include "tiers/remote/cluster_conn.h"
#include "tiers/remote/redis_cluster.h"

namespace kvtier::redis {

constexpr uint32_t kSlots = 16384;
constexpr uint32_t kNoNode = UINT32_MAX;

using Clock = std::chrono::steady_clock;

// One node ever named by a seed, a slot map or a redirect.  Nodes are never removed (a
// cluster has a handful), so a node's index into Impl::nodes_ stays valid for the Impl's life.
struct Node {
  Node(std::string addr, std::string h, int p)
      : address(std::move(addr)), host(std::move(h)), port(p) {}
  // Constant after construction.
  const std::string address;  // host:port, as the cluster spells it
  const std::string host;
  const int port;
  // Guarded by Impl::mu_.
  std::vector<Connection> idle;  // healthy connections with no reply outstanding
  bool reachable = false;        // the last connection attempt or command succeeded
  uint64_t errors = 0;           // connection failures and timeouts
};

// The slot map one CLUSTER SLOTS reply describes: each range's master as host:port.
struct SlotRange {
  uint16_t first = 0, last = 0;
  std::string master;
};

// Parses a CLUSTER SLOTS reply; `queried_host` stands in for a master whose host the reply
// leaves empty ("" or "?": the node does not know its own address).
Result<std::vector<SlotRange>> parse_cluster_slots(const redisReply& reply,
                                                   const std::string& queried_host);

// A MOVED or ASK redirect: "MOVED 3999 127.0.0.1:6381".
struct Redirect {
  bool ask = false;
  uint16_t slot = 0;
  std::string address;
};
// Parses an error reply's text as a redirect; nullopt when it is another error.
std::optional<Redirect> parse_redirect(std::string_view error);

// "host:port" split at the last colon (IPv6 hosts have colons); port 0 when malformed.
std::pair<std::string, int> split_address(const std::string& address);

struct Cluster::Impl {
  explicit Impl(ClusterConfig c) : config(std::move(c)) { owner_.fill(kNoNode); }

  std::vector<Result<Reply>> execute(std::span<const Command> commands);

  // Reloads the slot map from the first node that answers CLUSTER SLOTS, trying nodes that
  // serve slots and answered last time first, then the seeds, then the rest; each attempt
  // bounded by the timeouts.  `force` = false skips the reload when one started less than
  // kMinRefreshInterval ago; any call skips it while another thread reloads.  Nothing is tried
  // after `deadline` (a node that does not answer costs the time left).  Returns the last failure
  // when no node answered.
  Status refresh(bool force, Clock::time_point deadline) EXCLUDES(refresh_mu_, mu_);

  // The node called `address`, added to the table when new.
  uint32_t intern(const std::string& address) REQUIRES(mu_);
  uint32_t node_index(const std::string& address) EXCLUDES(mu_);
  uint32_t owner_of(uint16_t slot) EXCLUDES(mu_);
  void set_owner(uint16_t slot, const std::string& address) EXCLUDES(mu_);

  // A connection to node `n`: an idle pooled one, or a new one (connect bounded by
  // connect_timeout and by `deadline`).  A pooled one whose peer has hung up is dropped.
  IoResult<Connection> checkout(uint32_t n, Clock::time_point deadline) EXCLUDES(mu_);
  // Takes a healthy connection with no reply outstanding back into node n's pool (kept while the
  // pool holds fewer than connections_per_node, closed otherwise).
  void checkin(uint32_t n, Connection conn) EXCLUDES(mu_);
  // Records a failed connection or command at node n (the connection itself is dropped).
  void node_failed(uint32_t n, bool timed_out) EXCLUDES(mu_);
  std::string address_of(uint32_t n) EXCLUDES(mu_);

  std::vector<NodeState> node_states() const EXCLUDES(mu_);

  // Constant after construction.
  const ClusterConfig config;

  Mutex refresh_mu_;  // before mu_
  mutable Mutex mu_;
  std::vector<std::unique_ptr<Node>> nodes_ GUARDED_BY(mu_);
  std::array<uint32_t, kSlots> owner_ GUARDED_BY(mu_);  // index into nodes_, or kNoNode
  Clock::time_point last_refresh_ GUARDED_BY(mu_);

  // Monotonic totals (see ClusterCounters); relaxed: counters() reads them, nothing else.
  struct Stats {
    std::atomic<uint64_t> commands{0}, round_trips{0}, moved{0}, ask{0}, refreshes{0},
        connection_errors{0}, timeouts{0};
  } stats;

 private:
  class Batch;  // cluster_execute.cpp
  Status refresh_from(uint32_t n, Clock::time_point deadline) EXCLUDES(mu_);
  std::vector<uint32_t> refresh_candidates() EXCLUDES(mu_);
};

// Reloads happen at most this often unless a MOVED asks for one.
constexpr auto kMinRefreshInterval = std::chrono::milliseconds(100);

}  // namespace kvtier::redis
