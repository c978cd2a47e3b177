// execute(): route each command by its key's slot, pipeline each node's group on one
// connection, follow MOVED and ASK, and turn every failure into a per-command kUnavailable.
//
// A batch runs in rounds.  A round sends every group first (one flush per node) and only then
// reads the replies, group after group, so all nodes work on their part at once.  Commands
// answered with MOVED or ASK, or never sent because their node refused the connection, go to
// the next round; every round is bounded by the batch's one deadline (command_timeout).
#include <hiredis/hiredis.h>

#include <algorithm>

#include "tiers/remote/cluster_impl.h"

namespace kvtier::redis {
namespace {

struct Attempt {
  uint32_t index = 0;           // into the caller's commands
  uint32_t ask_node = kNoNode;  // ASK redirect: send ASKING first, to this node
  uint32_t redirects = 0;       // redirects and re-routings so far
};

// One node's share of a round.
struct Group {
  uint32_t node = kNoNode;
  std::string address;
  std::vector<Attempt> attempts;
  Connection conn;  // set while its pipeline is in flight
};

// An attempt whose connection could not be opened: nothing of it reached the node, so it may
// be sent elsewhere once the slot map names another owner.
struct Unsent {
  Attempt attempt;
  uint32_t node = kNoNode;
  Status status;
};

std::chrono::milliseconds until(Clock::time_point deadline) {
  return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                  std::chrono::milliseconds(1));
}

}  // namespace

// One execute() call's state; lives on the caller's stack.
class Cluster::Impl::Batch {
 public:
  Batch(Impl& impl, std::span<const Command> commands)
      : impl_(impl),
        commands_(commands),
        deadline_(Clock::now() + impl.config.command_timeout),
        refresh_deadline_(deadline_ + impl.config.command_timeout),
        out_(commands.size(), Result<Reply>(error(Errc::kInternal, "not run"))) {
    for (uint32_t i = 0; i < commands.size(); ++i) {
      if (commands[i].key_arg < commands[i].argv.size())
        pending_.push_back({.index = i});
      else
        out_[i] = error(Errc::kInvalidArgument, "redis: command without argv[key_arg]");
    }
  }

  std::vector<Result<Reply>> run() {
    while (!pending_.empty()) {
      if (Clock::now() >= deadline_) {
        for (const Attempt& a : pending_)
          out_[a.index] = error(Errc::kUnavailable, "redis: redirects not done in time");
        break;
      }
      std::vector<Group> groups = route();
      pending_.clear();
      for (Group& g : groups) send(g);
      for (Group& g : groups) receive(g);
      reroute_unsent();
    }
    if (moved_seen_ || refresh_wanted_) (void)impl_.refresh(moved_seen_, refresh_deadline_);
    return std::move(out_);
  }

 private:
  uint16_t slot(const Attempt& a) const {
    const Command& c = commands_[a.index];
    return Cluster::slot_of(c.argv[c.key_arg]);
  }

  // One group per node, in the order the nodes first appear.
  std::vector<Group> route() {
    std::vector<Group> groups;
    MutexLock l(impl_.mu_);
    for (const Attempt& a : pending_) {
      const uint32_t node = a.ask_node != kNoNode ? a.ask_node : impl_.owner_[slot(a)];
      if (node == kNoNode) {
        out_[a.index] = error(Errc::kUnavailable, "redis: no node serves the key's slot");
        refresh_wanted_ = true;
        continue;
      }
      auto g = std::find_if(groups.begin(), groups.end(),
                            [&](const Group& x) { return x.node == node; });
      if (g == groups.end()) {
        g = groups.emplace(groups.end());
        g->node = node;
        g->address = impl_.nodes_[node]->address;
      }
      g->attempts.push_back(a);
    }
    return groups;
  }

  // Queues the group's commands on one connection and sends them all.
  void send(Group& g) {
    IoResult<Connection> c = impl_.checkout(g.node, deadline_);
    if (!c.is_ok()) {
      for (const Attempt& a : g.attempts) unsent_.push_back({a, g.node, c.error().status});
      refresh_wanted_ = true;
      return;
    }
    g.conn = std::move(c.value());
    set_timeout(g.conn.get(), until(deadline_));
    for (const Attempt& a : g.attempts) {
      if (a.ask_node != kNoNode) {
        const std::string_view asking[] = {"ASKING"};
        append_command(g.conn.get(), asking);
      }
      append_command(g.conn.get(), commands_[a.index].argv);
    }
    impl_.stats.round_trips.fetch_add(1, std::memory_order_relaxed);
    if (std::optional<IoError> e = flush(g.conn.get(), g.address)) {
      // Part of the pipeline may have reached the node: not retried (a write could apply
      // twice).
      fail(g, 0, *e);
      g.conn.reset();
    }
  }

  // Reads the group's replies in order; a connection that fails is dropped.
  void receive(Group& g) {
    if (g.conn == nullptr) return;
    set_timeout(g.conn.get(), until(deadline_));
    for (size_t k = 0; k < g.attempts.size(); ++k) {
      const Attempt& a = g.attempts[k];
      IoResult<OwnedReply> r = read_one(g, a);
      if (!r.is_ok()) {
        fail(g, k, r.error());
        return;
      }
      settle(g, a, std::move(r.value()));
    }
    impl_.checkin(g.node, std::move(g.conn));
  }

  IoResult<OwnedReply> read_one(Group& g, const Attempt& a) {
    if (a.ask_node != kNoNode) {
      // ASKING's +OK carries nothing; its command's reply follows.
      IoResult<OwnedReply> asking = read_reply(g.conn.get(), g.address);
      if (!asking.is_ok()) return asking.error();
    }
    return read_reply(g.conn.get(), g.address);
  }

  // The group's attempts from `first` on get `e`: their node failed or did not answer.
  void fail(const Group& g, size_t first, const IoError& e) {
    impl_.node_failed(g.node, e.timed_out);
    for (size_t j = first; j < g.attempts.size(); ++j) out_[g.attempts[j].index] = e.status;
    refresh_wanted_ = true;
  }

  // A reply is the command's result, or a redirect to follow in the next round.
  void settle(const Group& g, Attempt a, OwnedReply reply) {
    if (reply->type == REDIS_REPLY_ERROR) {
      const std::string_view text(reply->str, reply->len);
      if (std::optional<Redirect> to = parse_redirect(text)) {
        if (to->ask) {
          impl_.stats.ask.fetch_add(1, std::memory_order_relaxed);
        } else {
          impl_.stats.moved.fetch_add(1, std::memory_order_relaxed);
          impl_.set_owner(to->slot, to->address);
          moved_seen_ = true;
        }
        if (a.redirects >= impl_.config.max_redirects) {
          out_[a.index] = error(Errc::kUnavailable,
                                "redis: too many redirects, the last: " + std::string(text));
          return;
        }
        a.redirects++;
        a.ask_node = to->ask ? impl_.node_index(to->address) : kNoNode;
        pending_.push_back(a);
        return;
      }
      // The node sees the cluster down (a master lost and not yet replaced): to the caller
      // that is an unreachable node.
      if (text.starts_with("CLUSTERDOWN")) {
        out_[a.index] = error(Errc::kUnavailable, "redis " + g.address + ": " + std::string(text));
        refresh_wanted_ = true;
        return;
      }
    }
    out_[a.index] = Reply(reply.release());
  }

  // Commands whose node refused the connection go to the slot's new owner once the reloaded
  // map names one (a failover); the others fail with the connection's error.
  void reroute_unsent() {
    if (unsent_.empty()) return;
    (void)impl_.refresh(false, refresh_deadline_);
    refresh_wanted_ = false;
    for (Unsent& u : unsent_) {
      const uint32_t owner =
          u.attempt.ask_node == kNoNode ? impl_.owner_of(slot(u.attempt)) : kNoNode;
      if (owner == kNoNode || owner == u.node ||
          u.attempt.redirects >= impl_.config.max_redirects) {
        out_[u.attempt.index] = std::move(u.status);
        continue;
      }
      u.attempt.redirects++;
      pending_.push_back(u.attempt);
    }
    unsent_.clear();
  }

  Impl& impl_;
  const std::span<const Command> commands_;
  const Clock::time_point deadline_;
  // Map reloads (after a refused connection, at the end) share one more command_timeout: a
  // batch returns within twice command_timeout whatever the nodes do.
  const Clock::time_point refresh_deadline_;
  std::vector<Result<Reply>> out_;
  std::vector<Attempt> pending_;  // for the next round
  std::vector<Unsent> unsent_;    // this round's
  bool refresh_wanted_ = false;   // after a failure: reload the map (at most every 100 ms)
  bool moved_seen_ = false;       // after a MOVED: reload it whatever the interval
};

std::vector<Result<Reply>> Cluster::Impl::execute(std::span<const Command> commands) {
  stats.commands.fetch_add(commands.size(), std::memory_order_relaxed);
  return Batch(*this, commands).run();
}

}  // namespace kvtier::redis
