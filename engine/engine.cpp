#include "engine/engine.h"

#include "common/names.h"

#include "engine/block_codec.h"

#include <algorithm>
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
  MutexLock lock(mu_);
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
    MutexLock lock(mu_);
    done_ = true;
    result_ = result;
    waiters.swap(waiters_);
  }
  for (auto& w : waiters) w(result);
}

Engine::Engine(const config::Config& config, std::vector<std::unique_ptr<HostTier>> hosts,
               std::unique_ptr<DiskTier> disk, std::string disk_status,
               std::unique_ptr<SemanticIndex> index, Metrics& metrics, GpuSetup gpu,
               std::unique_ptr<RemoteTier> remote)
    : config_(config),
      metrics_(metrics),
      disk_(std::move(disk)),
      disk_status_(std::move(disk_status)),
      remote_(std::move(remote)),
      index_(std::move(index)),
      nf4_errors_(config.metrics.nf4_error_sample),
      gpu_(std::move(gpu)),
      hosts_(std::move(hosts)) {
  if (disk_) stores_.push_back(disk_.get());
  if (remote_) stores_.push_back(remote_.get());
  memory_ladder_.resize(hosts_.size());
  for (const auto& t : gpu_.tiers)
    if (t->domain() < memory_ladder_.size()) memory_ladder_[t->domain()].push_back(t.get());
  for (size_t d = 0; d < hosts_.size(); ++d) memory_ladder_[d].push_back(hosts_[d].get());
  // Run inside Tier::reserve(), which is only called with mu_ held.
  // The tier still indexes the victim while its listener runs: the lookup index entry is
  // refreshed last, without that tier.
  for (const auto& h : hosts_)
    h->set_evict_listener(
        [this, tier = h.get()](const BlockInfo& b, std::span<const std::byte> bytes) {
          mu_.assert_held();
          event_removed(b.id, TierKind::kHost);
          demote(b, bytes);
          index_refresh_locked(b.id, tier);
        });
  for (const auto& t : gpu_.tiers) {
    GpuTier* tier = t.get();
    tier->set_evict_listener([this, tier](const BlockInfo& b) {
      mu_.assert_held();
      event_removed(b.id, TierKind::kGpu);
      if (host_locked(b.id.ns).find(b.id) != nullptr) {
        // The host tier has it already.
      } else if (std::optional<CopyDown> job = prepare_copy_down(*tier, b); !job) {
        bump(metrics_.gpu_demotions_dropped);
      } else if (copy_down_queue_ != nullptr) {  // reserve_gpu_locked() runs it
        copy_down_queue_->push_back(std::move(*job));
      } else {  // no reservation to defer it to: at once (not reached: see reserve_gpu_locked)
        bump(publish_copy_down_locked(*job, copy_down_bytes(*job))
                 ? metrics_.gpu_demotions
                 : metrics_.gpu_demotions_dropped);
      }
      index_refresh_locked(b.id, tier);
    });
    // Async promotions' completions, from the backend's thread: queued for event_reaper_.
    tier->pool().set_event_handler([queue = event_queue_, tier](uint64_t ticket) {
      MutexLock lock(queue->mu);
      queue->done.emplace_back(tier, ticket);
      queue->cv.notify_one();
    });
  }
  if (!gpu_.tiers.empty()) event_reaper_ = std::thread([this] { reap_events(); });
}

Engine::~Engine() {
  if (event_reaper_.joinable()) {
    {
      MutexLock lock(event_queue_->mu);
      event_queue_->stop = true;
      event_queue_->cv.notify_all();
    }
    event_reaper_.join();
  }
  std::vector<uint64_t> ids;
  {
    MutexLock lock(mu_);
    for (auto& [id, s] : sessions_) ids.push_back(id);
  }
  for (uint64_t id : ids) close_session(id);
  quiesce_stores();  // queued demotions land before the host tier goes
  // The backend unregisters the host arena when it goes: GPU tiers, backend, then host tier.
  // The pools finish their queued work first; the host blocks it read are released after.
  gpu_.tiers.clear();
  gpu_.backend.reset();
  MutexLock lock(mu_);
  for (PendingPromotion& p : pending_promotions_)
    for (const Session::Held& h : p.host_holds) h.tier->release(h.block);
  pending_promotions_.clear();
}

void Engine::quiesce_stores() {
  for (StoreTier* s : stores_) s->flush();
  if (remote_) remote_->stop();
}

HostTier& Engine::host_locked(uint32_t ns) const {
  return *hosts_[ns_domains_.at(ns)];
}

HostTier& Engine::host_of(uint32_t ns) {
  MutexLock lock(mu_);
  return host_locked(ns);
}

uint32_t Engine::domain_of(uint32_t ns) const {
  MutexLock lock(mu_);
  return ns_domains_.at(ns);
}

bool Engine::may_map(const PeerInfo& peer, size_t domain) const {
  for (const auto& rule : config_.namespaces)
    if (config_.domain_of(rule.arena) == static_cast<int>(domain) &&
        rule.allows(peer.uid, peer.gid, peer.groups))
      return true;
  return false;
}

const std::string& Engine::namespace_name(uint32_t ns) const {
  MutexLock lock(mu_);
  return ns_names_.at(ns);
}

StoreTier* Engine::demotion_store(const config::NamespaceRule& rule) const {
  for (StoreTier* s : stores_)
    if (s->kind() == TierKind::kDisk && rule.disk != config::DiskPolicy::kOff) return s;
  return nullptr;
}

const std::vector<MemoryTier*>& Engine::memory_tiers_locked(uint32_t ns) const {
  return memory_ladder_.at(ns_domains_.at(ns));
}

bool Engine::held_locked(const NsKey& id) const {
  for (MemoryTier* t : memory_tiers_locked(id.ns))
    if (t->contains(id)) return true;
  // A store's contains() is an index read (LMDB for the disk tier): no lock of ours needed,
  // but taken under mu_ so that a lookup sees one consistent ladder.
  for (StoreTier* s : stores_)
    if (s->answers_locally() && s->contains(id)) return true;
  return false;
}

bool Engine::store_writing(const NsKey& id) const {
  for (StoreTier* s : stores_)
    if (s->answers_locally() && s->writing(id)) return true;
  return false;
}

RemoteTier* Engine::remote_for(uint32_t ns) const {
  if (!remote_) return nullptr;
  MutexLock lock(mu_);
  return ns_rules_.at(ns)->remote != config::RemotePolicy::kOff ? remote_.get() : nullptr;
}

void Engine::demote(const BlockInfo& b, std::span<const std::byte> bytes) {
  const config::NamespaceRule* rule = ns_rules_.at(b.id.ns);
  if (remote_ && rule->remote == config::RemotePolicy::kWriteBack) {
    // Beside the disk tier's copy: the cluster's is the one other hosts can read.  The tier
    // copies the bytes into its queue (a full queue drops the write, counted there).
    (void)remote_->write(b.id, b.layout().to_layout(), bytes, rule->compress,
                         remote_stored_event(b.id));
  }
  StoreTier* store = demotion_store(*rule);
  if (store == nullptr) {
    bump(metrics_.demotions_skipped);
    return;
  }
  Metrics* m = &metrics_;
  BlockEventSink* events = events_.load(std::memory_order_acquire);
  std::string name = events ? ns_names_.at(b.id.ns) : std::string();
  const uint32_t domain = ns_domains_.at(b.id.ns);
  // StoreTier::write copies the bytes into its queue: the extent is freed right after this.
  Status st = store->write(b.id, b.layout().to_layout(), bytes, rule->compress,
                           [this, m, events, name, domain, id = b.id, store,
                            medium = medium_of(store->kind())](Status s) {
                             bump(s.is_ok() ? m->demotions : m->demotion_failures);
                             if (s && events) events->stored(name, std::span(&id.key, 1), medium);
                             if (!s && !store->contains(id)) index_disk(domain, id, false);
                           });
  // Queued (a lookup counts a block being written as cached) or on the disk already.
  if (st || st.code() == Errc::kAlreadyExists) index_disk(domain, b.id, true);
  if (st.code() == Errc::kLimit) bump(metrics_.demotions_dropped);
  // kAlreadyExists: a persist block, durable already.  Anything else refused the write.
  if (st.code() == Errc::kAlreadyExists) bump(metrics_.demotions);
  if (!st && st.code() != Errc::kLimit && st.code() != Errc::kAlreadyExists)
    bump(metrics_.demotion_failures);
}

Status Engine::persist(uint32_t ns, const BlockKey& key, std::function<void(Status)> done) {
  MutexLock lock(mu_);
  StoreTier* store = nullptr;
  for (StoreTier* s : stores_)
    if (s->durable()) {
      store = s;
      break;
    }
  if (store == nullptr) return error(Errc::kUnavailable, "no disk tier: " + disk_status_);
  HostTier& host = host_locked(ns);
  const BlockInfo* b = host.find(NsKey{ns, key});
  if (b == nullptr) return error(Errc::kNotFound, "block " + key.hex() + " left the host tier");
  if (BlockEventSink* events = events_.load(std::memory_order_acquire))
    done = [events, name = ns_names_.at(ns), key, medium = medium_of(store->kind()),
            done = std::move(done)](Status s) {
      if (s) events->stored(name, std::span(&key, 1), medium);
      done(std::move(s));
    };
  if (!lookup_index_.empty())
    done = [this, domain = ns_domains_.at(ns), id = NsKey{ns, key}, store,
            done = std::move(done)](Status s) {
      if (!s && !store->contains(id)) index_disk(domain, id, false);
      done(std::move(s));
    };
  Status st =
      store->write(NsKey{ns, key}, b->layout().to_layout(), {host.data(b->extent), b->extent.bytes},
                   ns_rules_.at(ns)->compress, std::move(done));
  if (st || st.code() == Errc::kAlreadyExists) index_disk(ns_domains_.at(ns), NsKey{ns, key}, true);
  if (st.code() == Errc::kAlreadyExists)
    return error(Errc::kAlreadyExists, std::string("on the ") + store->name() + " tier already");
  return st;
}

void Engine::write_through(uint32_t ns, const BlockKey& key) {
  MutexLock lock(mu_);
  const config::NamespaceRule* rule = ns_rules_.at(ns);
  HostTier& host = host_locked(ns);
  const BlockInfo* b = host.find(NsKey{ns, key});
  if (b == nullptr) return;  // evicted already: its write-back (if any) went with it
  // The tier copies the bytes into its queue before this returns (the lock keeps them put).
  (void)remote_->write(NsKey{ns, key}, b->layout().to_layout(),
                       {host.data(b->extent), b->extent.bytes}, rule->compress,
                       remote_stored_event(NsKey{ns, key}));
}

Result<PromotionTicket> Engine::begin_promotion(uint32_t ns, const BlockKey& key) {
  const NsKey id{ns, key};
  {
    MutexLock lock(mu_);
    if (auto it = promotions_.find(id); it != promotions_.end())
      return PromotionTicket{it->second, false, {}, nullptr, {}};
  }
  // The stores are thread-safe themselves: their index reads take no lock of ours.
  for (StoreTier* s : stores_) {
    if (!s->answers_locally()) continue;
    if (auto stored = s->locate(id)) return claim_promotion(ns, key, s, std::move(*stored));
  }
  return error(Errc::kNotFound, "not cached");
}

Result<PromotionTicket> Engine::claim_promotion(uint32_t ns, const BlockKey& key, StoreTier* from,
                                                StoredBlock stored) {
  const NsKey id{ns, key};
  MutexLock lock(mu_);
  if (auto it = promotions_.find(id); it != promotions_.end())
    return PromotionTicket{it->second, false, {}, nullptr, {}};
  HostTier& host = host_locked(ns);
  if (host.find(id) != nullptr) {
    // Promoted (or put) between get() and here: a fresh get() finds it.
    auto done = std::make_shared<Promotion>();
    done->complete({});
    return PromotionTicket{done, false, {}, nullptr, {}};
  }
  auto ext = host.reserve(stored.payload_bytes);
  if (!ext) return ext.status();
  PromotionTicket t{std::make_shared<Promotion>(), true, *ext, from, std::move(stored)};
  promotions_.emplace(id, t.promotion);
  return t;
}

LeaseGrant Engine::finish_promotion(uint64_t sid, uint32_t ns, const BlockKey& key,
                                    const PromotionTicket& t, Status read) {
  LeaseGrant g;
  g.key = key;
  const NsKey id{ns, key};
  {
    MutexLock lock(mu_);
    promotions_.erase(id);
    HostTier& host = host_locked(ns);
    if (read.is_ok()) {
      Status st = host.insert(id, t.extent, t.block.layout);
      if (!st) host.unreserve(t.extent);  // put by a client meanwhile: lease that one
      if (st) event_stored(id, TierKind::kHost);
      bump(metrics_.promotions);
    } else {
      host.unreserve(t.extent);
      bump(metrics_.promotion_failures);
    }
    Session* s = session(sid);
    const BlockInfo* b = read.is_ok() ? host.acquire(id) : nullptr;
    if (s == nullptr || b == nullptr) {
      if (b) host.release(b);
      g.code = s == nullptr ? Errc::kUnavailable : Errc::kNotFound;
    } else {
      g = grant(*s, host, *b);
    }
  }
  t.promotion->complete(read);
  return g;
}

uint64_t Engine::open_session(const PeerInfo& peer) {
  MutexLock lock(mu_);
  uint64_t id = next_session_++;
  Session& s = sessions_[id];
  s.peer = peer;
  s.connected_unix_ms = now_unix_ms();
  return id;
}

void Engine::mark_channel(uint64_t sid) {
  MutexLock lock(mu_);
  if (auto it = sessions_.find(sid); it != sessions_.end()) it->second.channel = true;
}

void Engine::close_session(uint64_t sid) {
  MutexLock lock(mu_);
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  for (auto& [lease, held] : it->second.leases) held.tier->release(held.block);
  bump(metrics_.leases_reclaimed, it->second.leases.size());
  for (auto& [put_id, put] : it->second.puts) {
    if (put.gpu_device >= 0) {
      gpu_tier(put.gpu_device, ns_domains_.at(put.ns))->unreserve(put.extent);
    } else {
      host_locked(put.ns).unreserve(put.extent);
    }
  }
  bump(metrics_.puts_aborted, it->second.puts.size());
  sessions_.erase(it);
}

bool Engine::drop_lease(Session& s, uint64_t lease_id) {
  auto it = s.leases.find(lease_id);
  if (it == s.leases.end()) return false;
  s.leased_bytes -= it->second.block->extent.bytes;
  it->second.tier->release(it->second.block);
  s.leases.erase(it);
  return true;
}

Engine::Session* Engine::session(uint64_t sid) {
  auto it = sessions_.find(sid);
  return it == sessions_.end() ? nullptr : &it->second;
}

std::optional<uint32_t> Engine::find_namespace(std::string_view ns) const {
  auto it = ns_ids_.find(std::string(ns));
  if (it == ns_ids_.end()) return std::nullopt;
  return it->second;
}

Result<uint32_t> Engine::resolve_namespace(std::string_view ns, const PeerInfo& peer) {
  if (Status st = check_name("namespace", ns, kMaxNamespaceBytes); !st) return st;
  const config::NamespaceRule* rule = config_.rule_for(ns);
  if (rule == nullptr || !rule->allows(peer.uid, peer.gid, peer.groups)) {
    bump(metrics_.permission_denied);
    return error(Errc::kPermissionDenied, "uid " + std::to_string(peer.uid) + " gid " +
                                              std::to_string(peer.gid) +
                                              " may not use namespace '" + std::string(ns) + "'");
  }
  MutexLock lock(mu_);
  return intern_locked(ns, rule);
}

uint32_t Engine::intern_locked(std::string_view ns, const config::NamespaceRule* rule) {
  if (auto id = find_namespace(ns)) return *id;
  uint32_t id = static_cast<uint32_t>(ns_names_.size());
  ns_names_.emplace_back(ns);
  ns_rules_.push_back(rule);
  ns_domains_.push_back(static_cast<uint32_t>(config_.domain_of(rule->arena)));  // validated
  ns_ids_.emplace(std::string(ns), id);
  if (!lookup_index_.empty()) {
    MutexLock names(index_names_mu_);  // a leaf lock (engine_index.cpp)
    index_names_.emplace(std::string(ns), std::make_pair(id, ns_domains_.back()));
  }
  if (disk_) disk_->name_namespace(id, ns);  // the disk tier's only id -> name (a leaf lock)
  if (remote_) remote_->name_namespace(id, ns, rule->remote_ttl_s);  // a leaf lock too
  return id;
}

const config::NamespaceRule& Engine::rule_of(uint32_t ns) const {
  MutexLock lock(mu_);
  return *ns_rules_.at(ns);
}

uint32_t Engine::prefix_cached(uint32_t ns, std::span<const BlockKey> keys) const {
  MutexLock lock(mu_);
  uint32_t n = 0;
  for (const auto& k : keys) {
    if (!held_locked(NsKey{ns, k})) break;
    ++n;
  }
  bump(metrics_.lookups);
  bump(metrics_.lookup_keys, keys.size());
  bump(metrics_.lookup_hits, n);
  return n;
}

bool Engine::is_cached(uint32_t ns, const BlockKey& key) const {
  uint8_t out = 0;
  cached(ns, std::span(&key, 1), std::span(&out, 1));
  return out != 0;
}

void Engine::cached(uint32_t ns, std::span<const BlockKey> keys, std::span<uint8_t> out) const {
  MutexLock lock(mu_);
  for (size_t i = 0; i < keys.size(); ++i) out[i] = held_locked(NsKey{ns, keys[i]});
}

Result<uint64_t> Engine::reserve_put(uint64_t sid, PendingPut put) {
  std::vector<CopyDown> copy_downs;
  Result<uint64_t> id = reserve_put_locked(sid, put, copy_downs);
  if (copy_downs.empty()) return id;
  finish_copy_downs(copy_downs);
  if (!id) return id;  // not reached: copy downs are deferred only into a reserved extent
  // The GPU blocks evicted for this put's extent are copied to the host tier before anyone
  // can write it: the put is registered (and its session may close and free the extent) only
  // after that.
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) {
    gpu_tier(put.gpu_device, ns_domains_.at(put.ns))->unreserve(put.extent);
    return error(Errc::kUnavailable, "session closed");
  }
  const uint64_t put_id = s->next_id++;
  s->puts.emplace(put_id, std::move(put));
  return put_id;
}

Result<uint64_t> Engine::reserve_put_locked(uint64_t sid, PendingPut& put,
                                            std::vector<CopyDown>& copy_downs) {
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  if (s->puts.size() >= config_.session.max_pending_puts)
    return error(Errc::kLimit, "too many unsealed puts on this connection (limit " +
                                   std::to_string(config_.session.max_pending_puts) + ")");
  // An expired pin must not keep its block from being evicted for this put (the daemon's
  // sweep rewrites the pin file; an expired entry in it is skipped at start anyway).
  expire_pins_locked(pin_clock_ms());
  const NsKey block{put.ns, put.key};
  HostTier& host = host_locked(put.ns);
  if (!put.fusion && (host.find(block) != nullptr || gpu_holder(block) != nullptr))
    return error(Errc::kAlreadyExists, "block " + put.key.hex() + " is already cached");
  Result<Extent> ext = error(Errc::kNoSpace, "");
  if (put.gpu_device >= 0) {
    ext = reserve_gpu_locked(*gpu_tier(put.gpu_device, ns_domains_.at(put.ns)),
                             put.stored_layout.total_bytes, copy_downs);
    if (!ext && ext.status().code() == Errc::kNoSpace) {
      // Leased blocks fill the GPU: the block goes to the host tier in the host format.
      bump(metrics_.gpu_put_fallbacks);
      put.gpu_device = -1;
      put.stored_layout = plan_stored_layout(put.client_layout, *ns_rules_.at(put.ns));
    }
  }
  if (put.gpu_device < 0) ext = host.reserve(put.stored_layout.total_bytes);
  if (!ext) {
    if (ext.status().code() == Errc::kNoSpace) bump(metrics_.puts_no_space);
    return ext.status();
  }
  put.extent = *ext;
  if (!copy_downs.empty()) return 0;  // reserve_put() registers it after the copies
  uint64_t id = s->next_id++;
  s->puts.emplace(id, std::move(put));
  return id;
}

Result<PendingPut> Engine::pending(uint64_t sid, uint64_t put_id) const {
  MutexLock lock(mu_);
  auto sit = sessions_.find(sid);
  if (sit == sessions_.end()) return error(Errc::kUnavailable, "session closed");
  auto it = sit->second.puts.find(put_id);
  if (it == sit->second.puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  return it->second;
}

Status Engine::seal_put(uint64_t sid, uint64_t put_id, BlockLayout stored_layout) {
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  auto it = s->puts.find(put_id);
  if (it == s->puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  PendingPut put = std::move(it->second);
  s->puts.erase(it);
  uint64_t raw = 0;
  for (const auto& t : stored_layout.tensors) raw += t.raw_bytes;
  if (put.gpu_device >= 0) {
    GpuTier* tier = gpu_tier(put.gpu_device, ns_domains_.at(put.ns));
    Status st = tier->insert(NsKey{put.ns, put.key}, put.extent, std::move(stored_layout));
    if (!st) {
      tier->unreserve(put.extent);
      return st;
    }
    event_stored(NsKey{put.ns, put.key}, TierKind::kGpu);
    bump(metrics_.puts);
    bump(metrics_.gpu_puts);
    bump(metrics_.put_bytes, raw);
    return {};
  }
  HostTier& host = host_locked(put.ns);
  if (put.fusion) {
    // The new block (chunk + fusion) replaces the old one: readers holding leases on the old
    // one keep it until they release (deferred free); the disk and GPU copies lack the fusion
    // state.
    // A pinned chunk stays pinned: the pin moves to the new host block.
    std::optional<Pin> pinned;
    if (auto it = pins_.find(NsKey{put.ns, put.key}); it != pins_.end()) {
      pinned = it->second;
      drop_pin_locked(NsKey{put.ns, put.key});
    }
    drop_copy_down_locked(NsKey{put.ns, put.key});
    for (const auto& t : gpu_.tiers)
      if (t->remove(NsKey{put.ns, put.key}) != RemoveOutcome::kNotFound)
        event_removed(NsKey{put.ns, put.key}, TierKind::kGpu);
    if (host.remove(NsKey{put.ns, put.key}) != RemoveOutcome::kNotFound)
      event_removed(NsKey{put.ns, put.key}, TierKind::kHost);
    if (disk_) (void)disk_->remove(NsKey{put.ns, put.key});
    drop_lease(*s, put.base_lease);
    Status st = host.insert(NsKey{put.ns, put.key}, put.extent, std::move(stored_layout));
    if (!st) {
      host.unreserve(put.extent);
      return st;
    }
    if (pinned) {
      const BlockInfo* b = host.acquire(NsKey{put.ns, put.key});
      pins_[NsKey{put.ns, put.key}] = Pin{&host, b, pinned->expires_unix_ms, -1};
      pinned_bytes_[put.ns] += b->extent.bytes;
    }
    event_stored(NsKey{put.ns, put.key}, TierKind::kHost);
    bump(metrics_.puts);
    bump(metrics_.put_bytes, raw);
    return {};
  }
  Status st = host.insert(NsKey{put.ns, put.key}, put.extent, std::move(stored_layout));
  if (!st) {
    host.unreserve(put.extent);  // another connection sealed the same key first
    return st;
  }
  event_stored(NsKey{put.ns, put.key}, TierKind::kHost);
  bump(metrics_.puts);
  bump(metrics_.put_bytes, raw);
  return {};
}

Status Engine::abort_put(uint64_t sid, uint64_t put_id) {
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  auto it = s->puts.find(put_id);
  if (it == s->puts.end())
    return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  if (it->second.gpu_device >= 0) {
    gpu_tier(it->second.gpu_device, ns_domains_.at(it->second.ns))->unreserve(it->second.extent);
  } else {
    host_locked(it->second.ns).unreserve(it->second.extent);
  }
  if (it->second.fusion) drop_lease(*s, it->second.base_lease);
  s->puts.erase(it);
  bump(metrics_.puts_aborted);
  return {};
}

uint32_t Engine::release(uint64_t sid, std::span<const uint64_t> lease_ids) {
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return 0;
  uint32_t n = 0;
  for (uint64_t id : lease_ids) n += drop_lease(*s, id);
  bump(metrics_.releases, n);
  return n;
}

Engine::RemoveCount Engine::remove_from_tiers(uint32_t ns, std::span<const BlockKey> keys) {
  MutexLock lock(mu_);
  RemoveCount c;
  for (const auto& k : keys) {
    // Per key: deferred when any tier still has it leased, else removed when any tier had it.
    bool removed = false;
    bool deferred = false;
    auto from = [&](Tier& t) {
      const RemoveOutcome o = t.remove(NsKey{ns, k});
      removed |= o == RemoveOutcome::kRemoved;
      deferred |= o == RemoveOutcome::kDeferred;
    };
    for (StoreTier* s : stores_) {  // the disk tier reports its own removals
      if (s != remote_.get()) {
        from(*s);
      } else if (ns_rules_.at(ns)->remote != config::RemotePolicy::kOff) {
        from(*s);  // the delete is queued: reported as it is issued
        event_removed(NsKey{ns, k}, TierKind::kRemote);
      }
    }
    drop_copy_down_locked(NsKey{ns, k});  // a copy on its way to the host tier stays out
    // An explicit remove takes a pinned block too: the pin goes first (its lease).
    if (drop_pin_locked(NsKey{ns, k})) {
      bump(metrics_.unpins);
      c.durable_unpinned |= durable_pins_locked(ns);
    }
    for (MemoryTier* t : memory_tiers_locked(ns)) {
      const bool had = t->contains(NsKey{ns, k});
      from(*t);
      if (had) event_removed(NsKey{ns, k}, t->kind());
    }
    if (deferred) {
      ++c.deferred;
    } else if (removed) {
      ++c.removed;
    }
  }
  bump(metrics_.removes, c.removed + c.deferred);
  return c;
}

Engine::RemoveCount Engine::remove(uint32_t ns, std::span<const BlockKey> keys) {
  RemoveCount c = remove_from_tiers(ns, keys);
  if (c.durable_unpinned) save_pins();
  // A removed chunk's embedding entries go with it (the index is never called under mu_).
  if (index_) {
    const std::string name = namespace_name(ns);
    for (const auto& k : keys) index_->remove(name, k);
  }
  return c;
}

Engine::EvictCount Engine::evict(std::optional<std::string> ns, std::span<const BlockKey> keys,
                                 bool all, bool host, bool disk, bool gpu) {
  EvictCount c;
  if (!all && !ns) return c;
  std::unordered_set<BlockKey, BlockKeyHash> wanted(keys.begin(), keys.end());
  // A namespace is matched by id: the name is interned here when a rule covers it (the disk
  // tier may hold blocks of a namespace nobody has asked for since the start).  A name no
  // rule covers has no blocks in memory, and its disk blocks go only with an eviction of all.
  uint32_t want_ns = kUnnamedNamespace;
  if (!all) {
    if (!check_name("namespace", *ns, kMaxNamespaceBytes)) return c;
    const config::NamespaceRule* rule = config_.rule_for(*ns);
    if (rule == nullptr) return c;
    MutexLock lock(mu_);
    want_ns = intern_locked(*ns, rule);
  }
  auto match = [&](const NsKey& id) {
    return all || (id.ns == want_ns && (wanted.empty() || wanted.count(id.key) > 0));
  };
  auto add = [](Tier::EvictCount& to, const Tier::EvictCount& e) {
    to.evicted += e.evicted;
    to.skipped_leased += e.skipped_leased;
    to.bytes += e.bytes;
  };
  // Stores first, without mu_ (they are thread-safe and may do I/O).
  if (disk)
    for (StoreTier* s : stores_)
      if (s->kind() == TierKind::kDisk) c.disk += s->evict_matching(match).evicted;
  MutexLock lock(mu_);
  if (host)  // copies on their way to the host tier stay out of it
    std::erase_if(copying_down_, [&](const auto& e) { return match(e.first); });
  EvictedKeys gone;  // for KV events
  for (const auto& ladder : memory_ladder_)
    for (MemoryTier* t : ladder) {
      const bool wanted_kind = t->kind() == TierKind::kHost ? host : gpu;
      if (wanted_kind)
        add(t->kind() == TierKind::kHost ? c.host : c.gpu, evict_tracked(*t, match, gone));
    }
  report_evicted(
      gone, all && host && disk && gpu && c.host.skipped_leased == 0 && c.gpu.skipped_leased == 0);
  return c;
}

uint64_t Engine::session_count() const {
  MutexLock lock(mu_);
  return sessions_.size();
}

uint64_t Engine::leases_of(uint64_t sid) const {
  MutexLock lock(mu_);
  auto it = sessions_.find(sid);
  return it == sessions_.end() ? 0 : it->second.leases.size();
}

}  // namespace kvtier
