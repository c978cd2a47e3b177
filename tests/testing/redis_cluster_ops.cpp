// The fixture's operations on a running cluster: raw commands, node faults, failover and
// resharding.
#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/wait.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>

#include "tests/testing/redis_cluster.h"
#include "tests/testing/redis_cluster_internal.h"

namespace kvtier::testing {

using namespace redis_fixture;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

RedisValue copy_reply(const redisReply* r) {
  RedisValue v;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      v.type = RedisValue::Type::kString;
      break;
    case REDIS_REPLY_STATUS:
      v.type = RedisValue::Type::kStatus;
      break;
    case REDIS_REPLY_ERROR:
      v.type = RedisValue::Type::kError;
      break;
    case REDIS_REPLY_INTEGER:
      v.type = RedisValue::Type::kInteger;
      v.integer = r->integer;
      return v;
    case REDIS_REPLY_ARRAY:
      v.type = RedisValue::Type::kArray;
      for (size_t i = 0; i < r->elements; ++i) v.elements.push_back(copy_reply(r->element[i]));
      return v;
    default:
      return v;
  }
  v.str.assign(r->str, r->len);
  return v;
}

}  // namespace

std::vector<std::string> RedisCluster::seeds() const {
  std::vector<std::string> out;
  for (const Node& n : nodes_) out.push_back(n.addr);
  return out;
}

std::string RedisCluster::any_live_node() const {
  for (const Node& n : nodes_)
    if (n.alive) return n.addr;
  throw std::runtime_error("redis fixture: no live node");
}

std::string RedisCluster::master_of_slot(uint16_t slot) const {
  for (const auto& [first, last, master] : slot_map_of(run(any_live_node(), {"CLUSTER", "SLOTS"})))
    if (first <= slot && slot <= last) return master;
  throw std::runtime_error("redis fixture: no master serves slot " + std::to_string(slot));
}

std::vector<std::string> RedisCluster::masters() const {
  std::vector<std::string> out;
  for (const auto& [first, last, master] : slot_map_of(run(any_live_node(), {"CLUSTER", "SLOTS"})))
    if (std::find(out.begin(), out.end(), master) == out.end()) out.push_back(master);
  return out;
}

RedisCluster::Node& RedisCluster::node(const std::string& addr) {
  for (Node& n : nodes_)
    if (n.addr == addr) return n;
  throw std::runtime_error("redis fixture: no node " + addr);
}

const RedisCluster::Node& RedisCluster::node(const std::string& addr) const {
  for (const Node& n : nodes_)
    if (n.addr == addr) return n;
  throw std::runtime_error("redis fixture: no node " + addr);
}

const std::string& RedisCluster::node_id(const std::string& addr) const {
  return node(addr).id;
}

RedisValue RedisCluster::run(const std::string& addr, const std::vector<std::string>& argv) const {
  std::unique_ptr<redisContext, void (*)(redisContext*)> c(
      redisConnectWithTimeout(kHost, port_of(addr), {2, 0}), redisFree);
  if (c == nullptr || c->err != 0)
    throw std::runtime_error("redis fixture: cannot connect to " + addr);
  redisSetTimeout(c.get(), {10, 0});
  const auto command = [&](const std::vector<std::string>& args) {
    std::vector<const char*> p;
    std::vector<size_t> len;
    for (const std::string& a : args) {
      p.push_back(a.data());
      len.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c.get(), static_cast<int>(args.size()), p.data(), len.data()));
    if (r == nullptr)
      throw std::runtime_error("redis fixture: " + addr + " " + args[0] + ": " + c->errstr);
    RedisValue v = copy_reply(r);
    freeReplyObject(r);
    return v;
  };
  if (!options_.password.empty()) check_ok(command({"AUTH", options_.password}), "AUTH");
  return command(argv);
}

void RedisCluster::check_ok(const RedisValue& v, const std::string& what) const {
  if (v.type == RedisValue::Type::kError)
    throw std::runtime_error("redis fixture: " + what + ": " + v.str);
}

void RedisCluster::kill_node(const std::string& addr) {
  Node& n = node(addr);
  if (!n.alive) return;
  ::kill(n.pid, SIGKILL);
  ::waitpid(n.pid, nullptr, 0);
  n.alive = false;
}

void RedisCluster::pause_node(const std::string& addr) {
  ::kill(node(addr).pid, SIGSTOP);
}
void RedisCluster::resume_node(const std::string& addr) {
  ::kill(node(addr).pid, SIGCONT);
}

void RedisCluster::wait_failover(const std::string& old_master, std::chrono::milliseconds limit) {
  const Clock::time_point until = Clock::now() + limit;
  while (Clock::now() < until) {
    bool done = true;
    std::optional<SlotMap> first;
    for (const Node& n : nodes_) {
      if (!n.alive || !done) continue;
      const std::string state = info_field(run(n.addr, {"CLUSTER", "INFO"}).str, "cluster_state");
      const SlotMap m = slot_map_of(run(n.addr, {"CLUSTER", "SLOTS"}));
      const bool old_serves = std::any_of(
          m.begin(), m.end(), [&](const auto& r) { return std::get<2>(r) == old_master; });
      done = state == "ok" && covered(m) == kSlots && !old_serves && (!first || *first == m);
      if (!first) first = m;
    }
    if (done) return;
    std::this_thread::sleep_for(50ms);
  }
  throw std::runtime_error("redis fixture: no failover of " + old_master + " in time");
}

void RedisCluster::begin_migration(uint16_t slot, const std::string& from, const std::string& to) {
  const std::string s = std::to_string(slot);
  check_ok(run(to, {"CLUSTER", "SETSLOT", s, "IMPORTING", node_id(from)}), "SETSLOT IMPORTING");
  check_ok(run(from, {"CLUSTER", "SETSLOT", s, "MIGRATING", node_id(to)}), "SETSLOT MIGRATING");
}

void RedisCluster::move_keys(const std::string& from, const std::string& to,
                             const std::vector<std::string>& keys) {
  if (keys.empty()) return;
  std::vector<std::string> argv = {"MIGRATE", kHost, std::to_string(port_of(to)), "", "0", "5000"};
  if (!options_.password.empty()) argv.insert(argv.end(), {"AUTH", options_.password});
  argv.push_back("KEYS");
  argv.insert(argv.end(), keys.begin(), keys.end());
  check_ok(run(from, argv), "MIGRATE");
}

void RedisCluster::finish_migration(uint16_t slot, const std::string& from, const std::string& to) {
  const std::string s = std::to_string(slot);
  for (;;) {
    const RedisValue keys = run(from, {"CLUSTER", "GETKEYSINSLOT", s, "100"});
    if (keys.elements.empty()) break;
    std::vector<std::string> names;
    for (const RedisValue& k : keys.elements) names.push_back(k.str);
    move_keys(from, to, names);
  }
  // The destination first, then the source, then every other master (the specification's
  // order: the slot never is without an owner that accepts its keys).
  std::vector<std::string> order = {to, from};
  for (const std::string& m : masters())
    if (m != to && m != from) order.push_back(m);
  for (const std::string& m : order)
    check_ok(run(m, {"CLUSTER", "SETSLOT", s, "NODE", node_id(to)}), "SETSLOT NODE");
}

void RedisCluster::migrate_slot(uint16_t slot, const std::string& from, const std::string& to) {
  begin_migration(slot, from, to);
  finish_migration(slot, from, to);
}

}  // namespace kvtier::testing
