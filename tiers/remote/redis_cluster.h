// A Redis Cluster client on hiredis (Debian 12 ships no C or C++ cluster client).  What the
// Redis Cluster specification asks of a client, and no more:
//
//   - the key's hash slot: CRC16 (XMODEM) of the key, or of its {hash tag}, mod 16384;
//   - the slot map from CLUSTER SLOTS, loaded from any reachable seed or known node, and
//     reloaded after a MOVED reply, a connection failure or a timeout;
//   - MOVED (update the map, retry at the new owner) and ASK (ASKING + the command, once, at
//     the named node) redirects, at most `max_redirects` per command;
//   - a small pool of connections per master node, each with connect and command timeouts.
//
// Commands are batched: execute() groups the commands by the node owning each one's key slot
// and pipelines each group on one connection (one round trip per node involved; the groups of
// different nodes are in flight at the same time).  Blocking, thread-safe: it is called from
// the remote tier's own worker threads, never from an io thread.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"

struct redisReply;

namespace kvtier::redis {

struct ClusterConfig {
  std::vector<std::string> seeds;  // "host:port" of any nodes of the cluster
  std::chrono::milliseconds connect_timeout{500};
  std::chrono::milliseconds command_timeout{2000};
  uint32_t connections_per_node = 2;  // pooled; more are opened (and closed after) on demand
  uint32_t max_redirects = 5;
  std::string password;  // AUTH when not empty
};

// One command: its arguments (binary-safe, not copied: valid for the call), the key at
// argv[key_arg] (its slot routes the command).
struct Command {
  std::vector<std::string_view> argv;
  uint32_t key_arg = 1;
};

// A reply, owning hiredis's reply object.  Strings are views into it.
class Reply {
 public:
  enum class Kind : uint8_t { kNil, kString, kStatus, kInteger, kArray, kError };
  Reply() = default;
  explicit Reply(redisReply* r);  // takes ownership
  Kind kind() const;
  bool is_nil() const { return kind() == Kind::kNil; }
  std::string_view str() const;   // kString, kStatus, kError
  long long integer() const;      // kInteger
  size_t size() const;            // kArray: elements
  Reply element(size_t i) const;  // kArray: a view sharing this reply's ownership

 private:
  std::shared_ptr<redisReply> root_;
  const redisReply* r_ = nullptr;
};

struct NodeState {
  std::string address;  // host:port
  bool reachable = false;
  uint32_t slots = 0;   // slots this node serves as master in the current map
  uint64_t errors = 0;  // connection failures and timeouts
};

struct ClusterCounters {
  uint64_t commands = 0;
  uint64_t round_trips = 0;  // pipelines sent (one per node per execute)
  uint64_t moved = 0;
  uint64_t ask = 0;
  uint64_t slot_map_refreshes = 0;
  uint64_t connection_errors = 0;
  uint64_t timeouts = 0;
};

class Cluster {
 public:
  // Loads the slot map from the first seed that answers, each seed bounded by command_timeout
  // and at most three command timeouts in all; kUnavailable when none answers (the caller may
  // retry: the remote tier reconnects in the background).
  static Result<std::unique_ptr<Cluster>> connect(ClusterConfig config);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Runs every command (pipelined per node, redirects followed) and returns one result per
  // command, in order: the reply (a Redis error reply is a Reply of Kind::kError), or
  // kUnavailable when its node could not be reached or did not answer within
  // command_timeout (the slot map is then refreshed for the next call).  Never throws.
  std::vector<Result<Reply>> execute(std::span<const Command> commands);

  // The key's hash slot (hash tags honoured).
  static uint16_t slot_of(std::string_view key);

  std::vector<NodeState> nodes() const;
  ClusterCounters counters() const;

 private:
  struct Impl;
  explicit Cluster(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::redis
