// The Engine's side of the GPU tier: leases in any tier, copies down to the host tier, and
// promotions from the host tier into a GPU (docs/gpu.md, docs/internals.md).
#include <algorithm>

#include "engine/block_codec.h"
#include "engine/engine.h"
#include "engine/gpu_moves.h"

namespace kvtier {

GpuTier* Engine::gpu_tier(int device, uint32_t domain) const {
  for (const auto& t : gpu_.tiers)
    if ((device == -1 || t->device() == device) && t->domain() == domain) return t.get();
  return nullptr;
}

GpuTier* Engine::gpu_holder(const NsKey& id) const {
  for (const auto& t : gpu_.tiers)
    if (t->find(id) != nullptr) return t.get();
  return nullptr;
}

LeaseGrant Engine::grant(Session& s, MemoryTier& tier, const BlockInfo& b) {
  LeaseGrant g;
  g.key = b.id.key;
  g.lease_id = s.next_id++;
  g.extent = b.extent;
  g.layout = b.layout();
  if (tier.kind() == TierKind::kGpu) {
    g.tier = TierKind::kGpu;
    g.device = static_cast<GpuTier&>(tier).device();
    if (auto it = gpu_ready_events_.find(b.id);
        it != gpu_ready_events_.end() && it->second.first == &tier)
      g.ready_event = it->second.second;
  }
  s.leases.emplace(g.lease_id, Session::Held{&tier, &b});
  s.leased_bytes += b.extent.bytes;
  return g;
}

std::vector<LeaseGrant> Engine::lease_cached(uint64_t sid, uint32_t ns,
                                             std::span<const BlockKey> keys, Placement where) {
  std::vector<LeaseGrant> out;
  out.reserve(keys.size());
  // Blocks only a GPU holds, copied into the host tier for this get after mu_ is released
  // (their GPU blocks leased meanwhile, so they stay put).
  struct HostCopy {
    size_t grant = 0;
    const BlockInfo* gpu_block = nullptr;
    CopyDown job;
  };
  std::vector<HostCopy> copies;
  std::vector<size_t> repeats;  // grants of a key this get lists again while it copies it
  {
    MutexLock lock(mu_);
    bump(metrics_.gets);
    Session* s = session(sid);
    HostTier& host = host_locked(ns);
    // The namespace's domain's pool on that device (none: host leases serve the get).
    GpuTier* want_gpu = where.gpu ? gpu_tier(where.device, ns_domains_.at(ns)) : nullptr;
    for (const auto& k : keys) {
      const NsKey id{ns, k};
      LeaseGrant g;
      g.key = k;
      if (s == nullptr) {
        g.code = Errc::kUnavailable;
      } else if (s->leases.size() + copies.size() + repeats.size() >= config_.session.max_leases) {
        g.code = Errc::kLimit;
      } else if (const BlockInfo* b = want_gpu ? want_gpu->acquire(id) : nullptr) {
        g = grant(*s, *want_gpu, *b);
        bump(metrics_.get_hits);
        bump(metrics_.gpu_get_hits);
      } else if (const BlockInfo* h = host.acquire(id)) {
        g = grant(*s, host, *h);
        bump(metrics_.get_hits);
      } else if (std::any_of(copies.begin(), copies.end(),
                             [&](const HostCopy& c) { return c.job.id == id; })) {
        repeats.push_back(out.size());  // leased from the host tier once that copy is in
      } else if (GpuTier* holder = gpu_holder(id)) {
        // Only a GPU (another device's, for a GPU get) has it: a host copy serves this get.
        const BlockInfo* gpu_block = holder->acquire(id);
        if (std::optional<CopyDown> job = prepare_copy_down(*holder, *gpu_block)) {
          copies.push_back(HostCopy{out.size(), gpu_block, std::move(*job)});
        } else {
          holder->release(gpu_block);
          g.code = Errc::kNoSpace;  // cached, but leased blocks fill the host tier
        }
      } else {
        g.code = Errc::kNotFound;
        bump(metrics_.get_misses);
      }
      out.push_back(g);
    }
  }
  if (copies.empty()) return out;  // repeats come only with copies
  std::vector<CopyDown*> jobs;
  std::vector<NsKey> ids;
  for (HostCopy& c : copies) {
    jobs.push_back(&c.job);
    ids.push_back(c.job.id);
  }
  std::vector<Status> done = copy_down_bytes(jobs);
  if (copy_down_observer_) copy_down_observer_(ids);
  MutexLock lock(mu_);
  Session* s = session(sid);
  for (size_t i = 0; i < copies.size(); ++i) {
    HostCopy& c = copies[i];
    LeaseGrant& g = out[c.grant];
    const Status st = publish_copy_down_locked(c.job, std::move(done[i]));
    c.job.tier->release(c.gpu_block);
    if (st) bump(metrics_.gpu_copy_downs);
    // The copy, or one another request published first (the same key twice in a get).
    const BlockInfo* h = s ? c.job.host->acquire(c.job.id) : nullptr;
    if (h != nullptr) {
      g = grant(*s, *c.job.host, *h);
      bump(metrics_.get_hits);
    } else {
      g.code = s == nullptr                  ? Errc::kUnavailable
               : st.code() == Errc::kNoSpace ? Errc::kNoSpace
                                             : Errc::kNotFound;  // removed meanwhile
      if (g.code == Errc::kNotFound) bump(metrics_.get_misses);
    }
  }
  for (size_t i : repeats) {
    LeaseGrant& g = out[i];
    const BlockInfo* h = s ? host_locked(ns).acquire(NsKey{ns, g.key}) : nullptr;
    if (h != nullptr) {
      g = grant(*s, host_locked(ns), *h);
      bump(metrics_.get_hits);
    } else {
      g.code = s == nullptr ? Errc::kUnavailable : Errc::kNotFound;
      if (g.code == Errc::kNotFound) bump(metrics_.get_misses);
    }
  }
  return out;
}

std::optional<Engine::CopyDown> Engine::prepare_copy_down(GpuTier& tier, const BlockInfo& b) {
  const config::NamespaceRule& rule = *ns_rules_.at(b.id.ns);
  CopyDown job;
  job.id = b.id;
  job.tier = &tier;
  job.gpu_layout = b.layout().to_layout();
  job.gpu_extent = b.extent;
  job.host = &host_locked(b.id.ns);
  job.host_layout = plan_stored_layout(job.gpu_layout, rule);
  job.nf4 = nf4_options(rule);
  auto ext = job.host->reserve(job.host_layout.total_bytes);
  if (!ext) return std::nullopt;
  job.host_extent = *ext;
  job.ticket = ++copy_down_tickets_;
  copying_down_[b.id] = job.ticket;
  return job;
}

Result<Extent> Engine::reserve_gpu_locked(GpuTier& tier, uint64_t bytes,
                                          std::vector<CopyDown>& deferred) {
  std::vector<CopyDown> queued;
  copy_down_queue_ = &queued;
  Result<Extent> r = tier.reserve(bytes);
  copy_down_queue_ = nullptr;
  for (CopyDown& job : queued) {
    const Extent& v = job.gpu_extent;
    if (r && v.offset >= r->offset && v.offset + v.bytes <= r->offset + r->bytes) {
      deferred.push_back(std::move(job));
    } else {
      // Its place is free in the allocator again (a reservation that failed, or space it did
      // not use): the next reservation may write it once mu_ is released.
      bump(publish_copy_down_locked(job, copy_down_bytes(job)) ? metrics_.gpu_demotions
                                                               : metrics_.gpu_demotions_dropped);
    }
  }
  return r;
}

std::vector<Status> Engine::copy_down_bytes(std::span<CopyDown* const> jobs) {
  std::vector<Status> out(jobs.size());
  std::vector<bool> done(jobs.size());
  for (size_t first = 0; first < jobs.size(); ++first) {
    if (done[first]) continue;
    gpu::DevicePool& pool = jobs[first]->tier->pool();
    std::vector<GpuDemotion> batch;
    std::vector<size_t> which;
    for (size_t i = first; i < jobs.size(); ++i) {
      CopyDown& job = *jobs[i];
      if (done[i] || &job.tier->pool() != &pool) continue;
      batch.push_back({&job.gpu_layout, job.gpu_extent.offset, &job.host_layout,
                       job.host->data(job.host_extent), &job.nf4});
      which.push_back(i);
      done[i] = true;
    }
    std::vector<Status> st = demote_blocks(pool, batch);
    for (size_t k = 0; k < which.size(); ++k) out[which[k]] = std::move(st[k]);
  }
  return out;
}

Status Engine::copy_down_bytes(CopyDown& job) {
  CopyDown* one = &job;
  return copy_down_bytes(std::span(&one, 1)).front();
}

Status Engine::publish_copy_down_locked(CopyDown& job, Status st) {
  auto it = copying_down_.find(job.id);
  const bool current = it != copying_down_.end() && it->second == job.ticket;
  if (current) copying_down_.erase(it);
  // Removed, or evicted from the host tier by an admin, while the device worked: publishing
  // the copy would bring back what is gone.
  if (st && !current) st = error(Errc::kNotFound, "block removed during its copy down");
  // A put or another copy of the same block may have landed first: that one stays.
  if (st) st = job.host->insert(job.id, job.host_extent, std::move(job.host_layout));
  if (!st) {
    job.host->unreserve(job.host_extent);
    return st;
  }
  event_stored(job.id, TierKind::kHost);
  return {};
}

void Engine::finish_copy_downs(std::vector<CopyDown>& jobs) {
  if (jobs.empty()) return;
  std::vector<CopyDown*> all;
  for (CopyDown& job : jobs) all.push_back(&job);
  std::vector<Status> done = copy_down_bytes(all);
  if (copy_down_observer_) {
    std::vector<NsKey> ids;
    for (const CopyDown& job : jobs) ids.push_back(job.id);
    copy_down_observer_(ids);
  }
  MutexLock lock(mu_);
  for (size_t i = 0; i < jobs.size(); ++i)
    bump(publish_copy_down_locked(jobs[i], std::move(done[i])) ? metrics_.gpu_demotions
                                                               : metrics_.gpu_demotions_dropped);
  bump(metrics_.gpu_demotions_unlocked, jobs.size());
}

void Engine::drop_copy_down_locked(const NsKey& id) {
  copying_down_.erase(id);
}

void Engine::set_copy_down_observer(std::function<void(std::span<const NsKey>)> fn) {
  copy_down_observer_ = std::move(fn);
}

void Engine::hold_completions(bool held) {
  MutexLock lock(event_queue_->mu);
  event_queue_->held = held;
  event_queue_->cv.notify_all();
}

void Engine::reap_events() {
  EventQueue& q = *event_queue_;
  for (;;) {
    std::vector<std::pair<const GpuTier*, uint64_t>> done;
    {
      MutexLock lock(q.mu);
      q.cv.wait(lock, [&] {
        q.mu.assert_held();  // the wait holds it when it asks
        return q.stop || (!q.held && !q.done.empty());
      });
      if (q.done.empty()) return;  // stopped
      done.swap(q.done);
    }
    MutexLock lock(mu_);
    for (const auto& [tier, ticket] : done) complete_promotion_locked(tier, ticket);
  }
}

void Engine::complete_promotion_locked(const GpuTier* tier, uint64_t ticket) {
  for (auto it = pending_promotions_.begin(); it != pending_promotions_.end(); ++it) {
    if (it->tier == tier && it->ticket == ticket) {
      finish_pending_locked(*it);
      pending_promotions_.erase(it);
      return;
    }
  }
  early_completions_.emplace_back(tier, ticket);  // its promotion registers in a moment
}

void Engine::wait_ready(std::span<LeaseGrant> grants) {
  for (LeaseGrant& g : grants) {
    if (g.code != Errc::kOk || g.ready_event == 0) continue;
    // The pool is thread-safe and lives as long as the engine (gpu_.tiers is constant).
    for (const auto& t : gpu_.tiers)
      if (t->arena_id() == g.extent.arena) (void)t->pool().wait_event(g.ready_event);
    g.ready_event = 0;
    bump(metrics_.gpu_ready_waits);
  }
}

void Engine::finish_pending_locked(PendingPromotion& p) {
  for (const NsKey& id : p.ids) {
    auto it = gpu_ready_events_.find(id);
    if (it != gpu_ready_events_.end() && it->second == std::make_pair(p.tier, p.event))
      gpu_ready_events_.erase(it);
  }
  for (const Session::Held& h : p.host_holds) h.tier->release(h.block);
  bump(metrics_.gpu_async_completions);
}

void Engine::promote_to_gpu(uint64_t sid, uint32_t ns, std::span<LeaseGrant> grants, int device,
                            bool async) {
  struct Job {
    size_t grant = 0;
    BlockLayout host_layout, gpu_layout;
    Extent ext;
    Session::Held hold;  // the session's host lease, held by this promotion meanwhile
  };
  std::vector<Job> jobs;
  std::vector<CopyDown> copy_downs;  // the evictions that made room, copied before the writes
  GpuTier* tier = nullptr;
  HostTier* host = nullptr;
  {
    MutexLock lock(mu_);
    // The namespace's own domain's pool: an isolation domain's blocks never enter another's.
    tier = gpu_tier(device, ns_domains_.at(ns));
    host = &host_locked(ns);
    Session* s = session(sid);
    if (tier == nullptr || s == nullptr) return;
    for (size_t i = 0; i < grants.size(); ++i) {
      LeaseGrant& g = grants[i];
      if (g.code != Errc::kOk || g.tier != TierKind::kHost) continue;
      const NsKey id{ns, g.key};
      if (const BlockInfo* b = tier->acquire(id)) {  // promoted meanwhile by someone else
        drop_lease(*s, g.lease_id);
        g = grant(*s, *tier, *b);
        continue;
      }
      // The host lease pins the source block: its bytes and layout stay put while unlocked.
      // This promotion takes it from the session meanwhile, so that a session closing
      // meanwhile does not free what the device reads.
      Job job;
      job.grant = i;
      job.host_layout = g.layout.to_layout();
      job.gpu_layout = plan_gpu_layout(job.host_layout);
      auto r = reserve_gpu_locked(*tier, job.gpu_layout.total_bytes, copy_downs);
      if (!r) {
        bump(metrics_.gpu_promotion_fallbacks);
        continue;
      }
      job.ext = *r;
      auto lease = s->leases.extract(g.lease_id);
      job.hold = lease.mapped();
      s->leased_bytes -= job.hold.block->extent.bytes;
      jobs.push_back(std::move(job));
    }
  }
  finish_copy_downs(copy_downs);
  if (jobs.empty()) return;
  bump(metrics_.gpu_promotion_batches);
  std::vector<GpuPromotion> batch;
  batch.reserve(jobs.size());
  for (const Job& j : jobs)
    batch.push_back(
        {&j.host_layout, host->data(grants[j.grant].extent), &j.gpu_layout, j.ext.offset});
  AsyncPromotion sent = async ? promote_blocks_async(tier->pool(), batch)
                              : AsyncPromotion{promote_blocks(tier->pool(), batch)};
  std::vector<Status>& done = sent.done;
  MutexLock lock(mu_);
  Session* s = session(sid);
  // In flight on the device: the blocks carry its event, the host blocks stay held until it
  // completes (a session that closes meanwhile must not free what the device reads).
  PendingPromotion pending{tier, sent.ticket, sent.event, {}, {}};
  for (size_t k = 0; k < jobs.size(); ++k) {
    const Job& j = jobs[k];
    LeaseGrant& g = grants[j.grant];
    const NsKey id{ns, g.key};
    Status st = done[k];
    // Removed, or replaced by a fusion put, while the device worked: publishing the copy would
    // bring back (or shadow) what is gone.
    const BlockInfo* now = host->find(id);
    if (st && (now == nullptr || !now->layout().same_block(g.layout)))
      st = error(Errc::kNotFound, "block left the host tier during its promotion");
    if (st) st = tier->insert(id, j.ext, j.gpu_layout);
    if (!st) tier->unreserve(j.ext);  // failed, or another session published it first
    if (st) {
      event_stored(id, TierKind::kGpu);
      bump(metrics_.gpu_promotions);
      bump(metrics_.gpu_promotion_bytes, j.gpu_layout.total_bytes);
      if (pending.event != 0) {
        gpu_ready_events_[id] = {tier, pending.event};
        pending.ids.push_back(id);
      }
    }
    const BlockInfo* b = s ? tier->acquire(id) : nullptr;
    if (b == nullptr) {
      if (!st) bump(metrics_.gpu_promotion_fallbacks);
      if (s != nullptr) {  // the session keeps its host lease
        s->leases.emplace(g.lease_id, j.hold);
        s->leased_bytes += j.hold.block->extent.bytes;
      } else if (st && pending.event != 0) {
        pending.host_holds.push_back(j.hold);
      } else {
        j.hold.tier->release(j.hold.block);
      }
      continue;
    }
    if (pending.event != 0) {
      pending.host_holds.push_back(j.hold);  // released when the device is done
    } else {
      j.hold.tier->release(j.hold.block);
    }
    g = grant(*s, *tier, *b);
  }
  if (pending.event == 0) return;
  bump(metrics_.gpu_async_promotions);
  auto early = std::find(early_completions_.begin(), early_completions_.end(),
                         std::make_pair(pending.tier, pending.ticket));
  if (early != early_completions_.end()) {  // done already
    early_completions_.erase(early);
    finish_pending_locked(pending);
    return;
  }
  pending_promotions_.push_back(std::move(pending));
}

Result<std::unique_ptr<gpu::DevicePool>> Engine::create_device_staging(int device, uint64_t bytes) {
  const GpuTier* tier = device < 0 ? nullptr : gpu_tier(device);
  if (tier == nullptr || !gpu_.backend)
    return error(Errc::kInvalidArgument,
                 "no GPU tier on device " + std::to_string(device) + " to stage a device put on");
  auto pool = gpu_.backend->create_pool(device, bytes, tier->pool().handle_type());
  if (!pool)
    return error(pool.status().code(), "device staging on gpu " + std::to_string(device) + ": " +
                                           pool.status().message());
  return pool;
}

}  // namespace kvtier
