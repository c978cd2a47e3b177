// The Engine's side of the GPU tier: leases in any tier, copies down to the host tier, and
// promotions from the host tier into a GPU (docs/gpu.md, docs/internals.md).
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
  }
  s.leases.emplace(g.lease_id, Session::Held{&tier, &b});
  s.leased_bytes += b.extent.bytes;
  return g;
}

// Runs with mu_ held, inside GpuTier::reserve() (eviction) or get(): the device quantizes
// the block straight into the host arena.  Holding the lock for the device work keeps the
// evicted extent's bytes intact until they are copied; on CUDA it is one kernel and a PCIe
// copy of the NF4 bytes (docs/gpu.md).
bool Engine::copy_down(GpuTier& tier, const BlockInfo& b) {
  const config::NamespaceRule& rule = *ns_rules_.at(b.id.ns);
  const BlockLayout gpu = b.layout().to_layout();
  // The host tier's format: KV float tensors with rule.codec, fusion tensors with fusion_codec.
  BlockLayout host = plan_stored_layout(gpu, rule);
  HostTier& to = host_locked(b.id.ns);  // the same domain's as the GPU pool's
  auto ext = to.reserve(host.total_bytes);
  if (!ext) return false;
  Status st =
      demote_block(tier.pool(), gpu, b.extent.offset, host, to.data(*ext), nf4_options(rule));
  if (st) st = to.insert(b.id, *ext, std::move(host));
  if (!st) {
    to.unreserve(*ext);
    return false;
  }
  event_stored(b.id, TierKind::kHost);
  return true;
}

void Engine::promote_to_gpu(uint64_t sid, uint32_t ns, std::span<LeaseGrant> grants, int device) {
  struct Job {
    size_t grant = 0;
    BlockLayout host_layout, gpu_layout;
    Extent ext;
  };
  std::vector<Job> jobs;
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
      Job job;
      job.grant = i;
      job.host_layout = g.layout.to_layout();
      job.gpu_layout = plan_gpu_layout(job.host_layout);
      auto r = tier->reserve(job.gpu_layout.total_bytes);
      if (!r) {
        bump(metrics_.gpu_promotion_fallbacks);
        continue;
      }
      job.ext = *r;
      jobs.push_back(std::move(job));
    }
  }
  if (jobs.empty()) return;
  bump(metrics_.gpu_promotion_batches);
  std::vector<GpuPromotion> batch;
  batch.reserve(jobs.size());
  for (const Job& j : jobs)
    batch.push_back(
        {&j.host_layout, host->data(grants[j.grant].extent), &j.gpu_layout, j.ext.offset});
  std::vector<Status> done = promote_blocks(tier->pool(), batch);
  MutexLock lock(mu_);
  Session* s = session(sid);
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
    }
    const BlockInfo* b = s ? tier->acquire(id) : nullptr;
    if (b == nullptr) {
      if (!st) bump(metrics_.gpu_promotion_fallbacks);
      continue;  // the session still holds the host lease
    }
    drop_lease(*s, g.lease_id);
    g = grant(*s, *tier, *b);
  }
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
