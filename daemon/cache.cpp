#include "daemon/cache.h"

#include <chrono>
#include <unordered_set>

namespace kvtier {
namespace {

uint64_t now_unix_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

void Promotion::wait(std::function<void(Status)> fn) {
  std::unique_lock lock(mu_);
  if (!done_) {
    waiters_.push_back(std::move(fn));
    return;
  }
  Status result = result_;
  lock.unlock();
  fn(result);
}

void Promotion::complete(Status result) {
  std::vector<std::function<void(Status)>> waiters;
  {
    std::lock_guard lock(mu_);
    done_ = true;
    result_ = result;
    waiters.swap(waiters_);
  }
  for (auto& w : waiters) w(result);
}

Cache::Cache(const config::Config& config, std::unique_ptr<HostTier> host,
             std::unique_ptr<DiskTier> disk, std::string disk_status,
             std::unique_ptr<SemanticIndex> index, Metrics& metrics)
    : config_(config),
      metrics_(metrics),
      disk_(std::move(disk)),
      disk_status_(std::move(disk_status)),
      index_(std::move(index)),
      host_(std::move(host)) {
  // Runs inside HostTier::reserve(), which is only called with mu_ held.
  host_->set_evict_listener(
      [this](const BlockInfo& b, std::span<const std::byte> bytes) { demote(b, bytes); });
}

Cache::~Cache() {
  std::vector<uint64_t> ids;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, s] : sessions_) ids.push_back(id);
  }
  for (uint64_t id : ids) close_session(id);
  if (disk_) disk_->flush();  // queued demotions reach the disk before the host tier goes
}

const std::string& Cache::namespace_name(uint32_t ns) const {
  std::lock_guard lock(mu_);
  return ns_names_.at(ns);
}

void Cache::demote(const BlockInfo& b, std::span<const std::byte> bytes) {
  const config::NamespaceRule* rule = ns_rules_.at(b.id.ns);
  if (!disk_ || rule->disk == config::DiskPolicy::kOff) {
    bump(metrics_.demotions_skipped);
    return;
  }
  Metrics* m = &metrics_;
  // DiskTier::write copies the bytes into its queue: the extent is freed right after this.
  Status st =
      disk_->write(ns_names_.at(b.id.ns), b.id.key, b.layout, bytes, rule->compress,
                   [m](Status s) { bump(s.is_ok() ? m->demotions : m->demotion_failures); });
  if (st.code() == Errc::kLimit) bump(metrics_.demotions_dropped);
  // kAlreadyExists: a persist block, durable already.  Anything else refused the write.
  if (st.code() == Errc::kAlreadyExists) bump(metrics_.demotions);
  if (!st && st.code() != Errc::kLimit && st.code() != Errc::kAlreadyExists)
    bump(metrics_.demotion_failures);
}

Status Cache::persist(uint32_t ns, const BlockKey& key, std::function<void(Status)> done) {
  std::lock_guard lock(mu_);
  if (!disk_) return error(Errc::kUnavailable, "no disk tier: " + disk_status_);
  const BlockInfo* b = host_->find(NsKey{ns, key});
  if (b == nullptr) return error(Errc::kNotFound, "block " + key.hex() + " left the host tier");
  Status st =
      disk_->write(ns_names_.at(ns), key, b->layout, {host_->data(b->extent), b->extent.bytes},
                   ns_rules_.at(ns)->compress, std::move(done));
  if (st.code() == Errc::kAlreadyExists) return error(Errc::kAlreadyExists, "on disk already");
  return st;
}

Result<PromotionTicket> Cache::begin_promotion(uint32_t ns, const BlockKey& key) {
  if (!disk_) return error(Errc::kNotFound, "not cached");
  const NsKey id{ns, key};
  std::string name;
  {
    std::lock_guard lock(mu_);
    if (auto it = promotions_.find(id); it != promotions_.end())
      return PromotionTicket{it->second, false, {}, {}};
    name = ns_names_.at(ns);
  }
  // The index read needs no lock of ours (LMDB read transaction).
  auto entry = disk_->find(name, key);
  if (!entry) return error(Errc::kNotFound, "not cached");
  std::lock_guard lock(mu_);
  if (auto it = promotions_.find(id); it != promotions_.end())
    return PromotionTicket{it->second, false, {}, {}};
  if (host_->find(id) != nullptr) {
    // Promoted (or put) between get() and here: a fresh get() finds it.
    auto done = std::make_shared<Promotion>();
    done->complete({});
    return PromotionTicket{done, false, {}, {}};
  }
  auto ext = host_->reserve(entry->payload_bytes);
  if (!ext) return ext.status();
  PromotionTicket t{std::make_shared<Promotion>(), true, *ext, std::move(*entry)};
  promotions_.emplace(id, t.promotion);
  return t;
}

LeaseGrant Cache::finish_promotion(uint64_t sid, uint32_t ns, const BlockKey& key,
                                   const PromotionTicket& t, Status read) {
  LeaseGrant g;
  g.key = key;
  const NsKey id{ns, key};
  {
    std::lock_guard lock(mu_);
    promotions_.erase(id);
    if (read.is_ok()) {
      Status st = host_->insert(id, t.extent, t.entry.layout);
      if (!st) host_->unreserve(t.extent);  // put by a client meanwhile: lease that one
      bump(metrics_.promotions);
    } else {
      host_->unreserve(t.extent);
      bump(metrics_.promotion_failures);
    }
    Session* s = session(sid);
    const BlockInfo* b = read.is_ok() ? host_->acquire(id) : nullptr;
    if (s == nullptr || b == nullptr) {
      if (b) host_->release(b);
      g.code = s == nullptr ? Errc::kUnavailable : Errc::kNotFound;
    } else {
      g.lease_id = s->next_id++;
      g.extent = b->extent;
      g.layout = &b->layout;
      s->leases.emplace(g.lease_id, b);
      s->leased_bytes += b->extent.bytes;
    }
  }
  t.promotion->complete(read);
  return g;
}

uint64_t Cache::open_session(const PeerInfo& peer) {
  std::lock_guard lock(mu_);
  uint64_t id = next_session_++;
  Session& s = sessions_[id];
  s.peer = peer;
  s.connected_unix_ms = now_unix_ms();
  return id;
}

void Cache::close_session(uint64_t sid) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  for (auto& [lease, block] : it->second.leases) host_->release(block);
  bump(metrics_.leases_reclaimed, it->second.leases.size());
  for (auto& [put_id, put] : it->second.puts) host_->unreserve(put.extent);
  bump(metrics_.puts_aborted, it->second.puts.size());
  sessions_.erase(it);
}

bool Cache::drop_lease(Session& s, uint64_t lease_id) {
  auto it = s.leases.find(lease_id);
  if (it == s.leases.end()) return false;
  s.leased_bytes -= it->second->extent.bytes;
  host_->release(it->second);
  s.leases.erase(it);
  return true;
}

Cache::Session* Cache::session(uint64_t sid) {
  auto it = sessions_.find(sid);
  return it == sessions_.end() ? nullptr : &it->second;
}

std::optional<uint32_t> Cache::find_namespace(std::string_view ns) const {
  auto it = ns_ids_.find(std::string(ns));
  if (it == ns_ids_.end()) return std::nullopt;
  return it->second;
}

Result<uint32_t> Cache::resolve_namespace(std::string_view ns, const PeerInfo& peer) {
  if (ns.empty() || ns.size() > 1024)
    return error(Errc::kInvalidArgument, "namespace must be 1..1024 bytes");
  const config::NamespaceRule* rule = config_.rule_for(ns);
  if (rule == nullptr || !rule->allows(peer.uid, peer.gid, peer.groups)) {
    bump(metrics_.permission_denied);
    return error(Errc::kPermissionDenied, "uid " + std::to_string(peer.uid) + " gid " +
                                              std::to_string(peer.gid) +
                                              " may not use namespace '" + std::string(ns) + "'");
  }
  std::lock_guard lock(mu_);
  if (auto id = find_namespace(ns)) return *id;
  uint32_t id = static_cast<uint32_t>(ns_names_.size());
  ns_names_.emplace_back(ns);
  ns_rules_.push_back(rule);
  ns_ids_.emplace(std::string(ns), id);
  return id;
}

const config::NamespaceRule& Cache::rule_of(uint32_t ns) const {
  std::lock_guard lock(mu_);
  return *ns_rules_.at(ns);
}

uint32_t Cache::lookup(uint32_t ns, std::span<const BlockKey> keys) const {
  std::lock_guard lock(mu_);
  uint32_t n = 0;
  for (const auto& k : keys) {
    if (host_->find(NsKey{ns, k}) == nullptr &&
        !(disk_ && disk_->find(ns_names_.at(ns), k).has_value()))
      break;
    ++n;
  }
  bump(metrics_.lookups);
  bump(metrics_.lookup_keys, keys.size());
  bump(metrics_.lookup_hits, n);
  return n;
}

bool Cache::is_cached(uint32_t ns, const BlockKey& key) const {
  std::lock_guard lock(mu_);
  if (host_->find(NsKey{ns, key}) != nullptr) return true;
  return disk_ && disk_->find(ns_names_.at(ns), key).has_value();
}

Result<uint64_t> Cache::begin_put(uint64_t sid, PendingPut put) {
  std::lock_guard lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  if (s->puts.size() >= config_.session.max_pending_puts)
    return error(Errc::kLimit, "too many unsealed puts on this connection (limit " +
                                   std::to_string(config_.session.max_pending_puts) + ")");
  if (!put.fusion && host_->find(NsKey{put.ns, put.key}) != nullptr)
    return error(Errc::kAlreadyExists, "block " + put.key.hex() + " is already cached");
  auto ext = host_->reserve(put.stored_layout.total_bytes);
  if (!ext) {
    if (ext.status().code() == Errc::kNoSpace) bump(metrics_.puts_no_space);
    return ext.status();
  }
  put.extent = *ext;
  uint64_t id = s->next_id++;
  s->puts.emplace(id, std::move(put));
  return id;
}

Result<PendingPut> Cache::pending(uint64_t sid, uint64_t put_id) const {
  std::lock_guard lock(mu_);
  auto sit = sessions_.find(sid);
  if (sit == sessions_.end()) return error(Errc::kUnavailable, "session closed");
  auto it = sit->second.puts.find(put_id);
  if (it == sit->second.puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  return it->second;
}

Status Cache::seal_put(uint64_t sid, uint64_t put_id, BlockLayout stored_layout) {
  std::lock_guard lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  auto it = s->puts.find(put_id);
  if (it == s->puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  PendingPut put = std::move(it->second);
  s->puts.erase(it);
  uint64_t raw = 0;
  for (const auto& t : stored_layout.tensors) raw += t.raw_bytes;
  if (put.fusion) {
    // The new block (chunk + fusion) replaces the old one: readers holding leases on the old
    // one keep it until they release (deferred free); the disk copy lacks the fusion state.
    (void)host_->remove(NsKey{put.ns, put.key});
    if (disk_) (void)disk_->remove(ns_names_.at(put.ns), put.key);
    drop_lease(*s, put.base_lease);
  }
  Status st = host_->insert(NsKey{put.ns, put.key}, put.extent, std::move(stored_layout));
  if (!st) {
    host_->unreserve(put.extent);  // another connection sealed the same key first
    return st;
  }
  bump(metrics_.puts);
  bump(metrics_.put_bytes, raw);
  return {};
}

Status Cache::abort_put(uint64_t sid, uint64_t put_id) {
  std::lock_guard lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  auto it = s->puts.find(put_id);
  if (it == s->puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  host_->unreserve(it->second.extent);
  if (it->second.fusion) drop_lease(*s, it->second.base_lease);
  s->puts.erase(it);
  bump(metrics_.puts_aborted);
  return {};
}

std::vector<LeaseGrant> Cache::get(uint64_t sid, uint32_t ns, std::span<const BlockKey> keys) {
  std::vector<LeaseGrant> out;
  out.reserve(keys.size());
  std::lock_guard lock(mu_);
  bump(metrics_.gets);
  Session* s = session(sid);
  for (const auto& k : keys) {
    LeaseGrant g;
    g.key = k;
    if (s == nullptr) {
      g.code = Errc::kUnavailable;
    } else if (s->leases.size() >= config_.session.max_leases) {
      g.code = Errc::kLimit;
    } else if (const BlockInfo* b = host_->acquire(NsKey{ns, k})) {
      g.lease_id = s->next_id++;
      g.extent = b->extent;
      g.layout = &b->layout;
      s->leases.emplace(g.lease_id, b);
      s->leased_bytes += b->extent.bytes;
      bump(metrics_.get_hits);
    } else {
      g.code = Errc::kNotFound;
      bump(metrics_.get_misses);
    }
    out.push_back(g);
  }
  return out;
}

uint32_t Cache::release(uint64_t sid, std::span<const uint64_t> lease_ids) {
  std::lock_guard lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return 0;
  uint32_t n = 0;
  for (uint64_t id : lease_ids) n += drop_lease(*s, id);
  bump(metrics_.releases, n);
  return n;
}

Cache::RemoveCount Cache::remove(uint32_t ns, std::span<const BlockKey> keys) {
  std::lock_guard lock(mu_);
  RemoveCount c;
  for (const auto& k : keys) {
    const bool on_disk = disk_ && disk_->remove(ns_names_.at(ns), k).is_ok();
    switch (host_->remove(NsKey{ns, k})) {
      case RemoveOutcome::kRemoved:
        ++c.removed;
        break;
      case RemoveOutcome::kDeferred:
        ++c.deferred;
        break;
      case RemoveOutcome::kNotFound:
        c.removed += on_disk;
        break;
    }
  }
  bump(metrics_.removes, c.removed + c.deferred);
  return c;
}

Cache::EvictCount Cache::evict(std::optional<std::string> ns, std::span<const BlockKey> keys,
                               bool all, bool host, bool disk) {
  EvictCount c;
  if (!all && !ns) return c;
  std::unordered_set<BlockKey, BlockKeyHash> wanted(keys.begin(), keys.end());
  auto match = [&](std::string_view block_ns, const BlockKey& k) {
    return all || (block_ns == *ns && (wanted.empty() || wanted.count(k) > 0));
  };
  if (disk && disk_)
    c.disk = disk_->evict_matching([&](const DiskEntry& e) { return match(e.ns, e.key); });
  if (host) {
    std::lock_guard lock(mu_);
    c.host = host_->evict_matching(
        [&](const BlockInfo& b) { return match(ns_names_.at(b.id.ns), b.id.key); });
  }
  return c;
}

uint64_t Cache::session_count() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

uint64_t Cache::leases_of(uint64_t sid) const {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(sid);
  return it == sessions_.end() ? 0 : it->second.leases.size();
}

}  // namespace kvtier
