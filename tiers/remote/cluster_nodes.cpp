// The node table, each node's connection pool and the slot map's reload.
#include <hiredis/hiredis.h>

#include <algorithm>

#include "tiers/remote/cluster_impl.h"

namespace kvtier::redis {
namespace {

std::chrono::milliseconds until(Clock::time_point deadline) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
}

}  // namespace

uint32_t Cluster::Impl::intern(const std::string& address) {
  for (uint32_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i]->address == address) return i;
  auto [host, port] = split_address(address);
  nodes_.push_back(std::make_unique<Node>(address, std::move(host), port));
  return static_cast<uint32_t>(nodes_.size() - 1);
}

uint32_t Cluster::Impl::node_index(const std::string& address) {
  MutexLock l(mu_);
  return intern(address);
}

void Cluster::Impl::set_owner(uint16_t slot, const std::string& address) {
  MutexLock l(mu_);
  owner_[slot] = intern(address);
}

uint32_t Cluster::Impl::owner_of(uint16_t slot) {
  MutexLock l(mu_);
  return owner_[slot];
}

std::string Cluster::Impl::address_of(uint32_t n) {
  MutexLock l(mu_);
  return nodes_[n]->address;
}

IoResult<Connection> Cluster::Impl::checkout(uint32_t n, Clock::time_point deadline) {
  std::string host;
  int port = 0;
  for (;;) {
    Connection c;
    {
      MutexLock l(mu_);
      Node& node = *nodes_[n];
      if (node.idle.empty()) {
        host = node.host;
        port = node.port;
        break;
      }
      c = std::move(node.idle.back());
      node.idle.pop_back();
    }
    if (idle_connection_alive(c.get())) return c;
    // The peer closed it while it sat in the pool (restart, failover, idle timeout): it is
    // dropped here, and the node's state is left to the next attempt.
  }
  const std::chrono::milliseconds left = until(deadline);
  if (left <= std::chrono::milliseconds(0)) {
    return IoError{error(Errc::kUnavailable, "redis " + host + ":" + std::to_string(port) +
                                                 ": timed out before connecting"),
                   true};
  }
  IoResult<Connection> c = open_connection(host, port, std::min(config.connect_timeout, left),
                                           config.command_timeout, config.password);
  if (!c.is_ok()) {
    node_failed(n, c.error().timed_out);
  } else {
    MutexLock l(mu_);
    nodes_[n]->reachable = true;
  }
  return c;
}

void Cluster::Impl::checkin(uint32_t n, Connection conn) {
  MutexLock l(mu_);
  Node& node = *nodes_[n];
  node.reachable = true;
  if (node.idle.size() < config.connections_per_node) node.idle.push_back(std::move(conn));
}

void Cluster::Impl::node_failed(uint32_t n, bool timed_out) {
  (timed_out ? stats.timeouts : stats.connection_errors).fetch_add(1, std::memory_order_relaxed);
  MutexLock l(mu_);
  nodes_[n]->errors++;
  nodes_[n]->reachable = false;
}

std::vector<uint32_t> Cluster::Impl::refresh_candidates() {
  MutexLock l(mu_);
  std::vector<bool> serves(nodes_.size(), false);
  for (const uint32_t n : owner_)
    if (n != kNoNode) serves[n] = true;
  // 0: serves slots and answered last time; 1: never tried (seeds); 2: the rest; 3: failed
  // last time (a hung node would cost a whole timeout).
  std::vector<int> rank(nodes_.size());
  for (uint32_t n = 0; n < nodes_.size(); ++n) {
    const Node& node = *nodes_[n];
    if (serves[n] && node.reachable)
      rank[n] = 0;
    else if (!node.reachable && node.errors == 0)
      rank[n] = 1;
    else
      rank[n] = node.reachable ? 2 : 3;
  }
  std::vector<uint32_t> order(nodes_.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return rank[a] < rank[b]; });
  return order;
}

Status Cluster::Impl::refresh(bool force, Clock::time_point deadline) {
  if (!refresh_mu_.try_lock()) return Status::ok();  // another thread is reloading it
  {
    MutexLock l(mu_);
    if (!force && Clock::now() - last_refresh_ < kMinRefreshInterval) {
      refresh_mu_.unlock();
      return Status::ok();
    }
    last_refresh_ = Clock::now();
  }
  Status last = error(Errc::kUnavailable, "no known node of the cluster");
  bool denied = false;
  for (const uint32_t n : refresh_candidates()) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) break;
    // One node that accepts and never answers costs at most one command timeout: the next
    // candidate still gets its turn when the caller allowed more.
    last = refresh_from(n, std::min(deadline, now + config.command_timeout));
    if (last.is_ok()) break;
    denied = denied || last.code() == Errc::kPermissionDenied;
  }
  refresh_mu_.unlock();
  if (!last.is_ok() && denied) return error(Errc::kPermissionDenied, last.message());
  return last;
}

Status Cluster::Impl::refresh_from(uint32_t n, Clock::time_point deadline) {
  IoResult<Connection> c = checkout(n, deadline);
  if (!c.is_ok()) return c.error().status;
  Connection conn = std::move(c.value());
  const std::string address = address_of(n);
  set_timeout(conn.get(), std::max(until(deadline), std::chrono::milliseconds(1)));
  const std::string_view argv[] = {"CLUSTER", "SLOTS"};
  append_command(conn.get(), argv);
  IoResult<OwnedReply> reply = read_reply(conn.get(), address);
  if (!reply.is_ok()) {
    node_failed(n, reply.error().timed_out);
    return reply.error().status;
  }
  checkin(n, std::move(conn));
  Result<std::vector<SlotRange>> ranges =
      parse_cluster_slots(*reply.value(), split_address(address).first);
  if (!ranges) return ranges.status();
  MutexLock l(mu_);
  owner_.fill(kNoNode);
  for (const SlotRange& r : *ranges) {
    const uint32_t owner = intern(r.master);
    std::fill(owner_.begin() + r.first, owner_.begin() + r.last + 1, owner);
  }
  stats.refreshes.fetch_add(1, std::memory_order_relaxed);
  return Status::ok();
}

std::vector<NodeState> Cluster::Impl::node_states() const {
  MutexLock l(mu_);
  std::vector<NodeState> out(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    out[i].address = nodes_[i]->address;
    out[i].reachable = nodes_[i]->reachable;
    out[i].errors = nodes_[i]->errors;
  }
  for (const uint32_t n : owner_)
    if (n != kNoNode) out[n].slots++;
  return out;
}

}  // namespace kvtier::redis
