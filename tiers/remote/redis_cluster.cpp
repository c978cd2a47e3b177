#include "tiers/remote/redis_cluster.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "tiers/remote/cluster_impl.h"

namespace kvtier::redis {

Reply::Reply(redisReply* r) : root_(r, [](redisReply* p) { freeReplyObject(p); }), r_(r) {}

Reply::Kind Reply::kind() const {
  if (r_ == nullptr) return Kind::kNil;
  switch (r_->type) {
    case REDIS_REPLY_STRING:
      return Kind::kString;
    case REDIS_REPLY_STATUS:
      return Kind::kStatus;
    case REDIS_REPLY_INTEGER:
      return Kind::kInteger;
    case REDIS_REPLY_ARRAY:
      return Kind::kArray;
    case REDIS_REPLY_ERROR:
      return Kind::kError;
    default:
      return Kind::kNil;
  }
}

std::string_view Reply::str() const {
  const Kind k = kind();
  if (k != Kind::kString && k != Kind::kStatus && k != Kind::kError) return {};
  return {r_->str, r_->len};
}

long long Reply::integer() const {
  return kind() == Kind::kInteger ? r_->integer : 0;
}

size_t Reply::size() const {
  return kind() == Kind::kArray ? r_->elements : 0;
}

Reply Reply::element(size_t i) const {
  Reply e;
  if (i >= size()) return e;
  e.root_ = root_;
  e.r_ = r_->element[i];
  return e;
}

Cluster::Cluster(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Cluster::~Cluster() = default;

Result<std::unique_ptr<Cluster>> Cluster::connect(ClusterConfig config) {
  if (config.seeds.empty()) return error(Errc::kInvalidArgument, "redis: no seed nodes");
  if (config.connect_timeout <= std::chrono::milliseconds(0) ||
      config.command_timeout <= std::chrono::milliseconds(0))
    return error(Errc::kInvalidArgument, "redis: timeouts must be positive");
  for (const std::string& seed : config.seeds)
    if (split_address(seed).second == 0)
      return error(Errc::kInvalidArgument, "redis: seed is not host:port: " + seed);
  auto impl = std::make_unique<Impl>(std::move(config));
  {
    MutexLock l(impl->mu_);
    for (const std::string& seed : impl->config.seeds) impl->intern(seed);
  }
  SigpipeBlock no_sigpipe;
  // Up to three seeds get a command timeout each: a seed that hangs (a paused node, a full
  // backlog) does not keep a daemon off a cluster whose other nodes answer.
  const auto seeds_tried = static_cast<int>(std::min<size_t>(impl->config.seeds.size(), 3));
  if (Status s = impl->refresh(true, Clock::now() + impl->config.command_timeout * seeds_tried);
      !s.is_ok())
    return s;
  return std::unique_ptr<Cluster>(new Cluster(std::move(impl)));
}

std::vector<Result<Reply>> Cluster::execute(std::span<const Command> commands) {
  SigpipeBlock no_sigpipe;
  return impl_->execute(commands);
}

std::vector<NodeState> Cluster::nodes() const {
  return impl_->node_states();
}

ClusterCounters Cluster::counters() const {
  const Impl::Stats& s = impl_->stats;
  const auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  return {.commands = get(s.commands),
          .round_trips = get(s.round_trips),
          .moved = get(s.moved),
          .ask = get(s.ask),
          .slot_map_refreshes = get(s.refreshes),
          .connection_errors = get(s.connection_errors),
          .timeouts = get(s.timeouts)};
}

}  // namespace kvtier::redis
