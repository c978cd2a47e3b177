// The engine's request calls that walk the tier ladder and may wait: lookup, get (GPU, host,
// copy down, promotion from disk, promotion into a GPU), fusion leases, and the life of a
// put (plan, reserve, encode, publish, persist).  docs/internals.md, "Life of a put" and
// "Life of a get", follows these functions.
#include "engine/await.h"
#include "engine/block_codec.h"
#include "engine/engine.h"
#include "engine/gpu_moves.h"

using boost::asio::awaitable;

namespace kvtier {
namespace {

using StartFn = std::function<void(std::function<void(Status)>)>;
// How long a get waits for a demotion still queued for the disk tier (ms).
constexpr int kDemotionWaitMs = 5000;
using StartFn2 = std::function<void(std::function<void(std::vector<uint8_t>)>)>;
using LocateFn = std::function<void(std::function<void(std::optional<StoredBlock>)>)>;

}  // namespace

awaitable<Engine::LookupResult> Engine::lookup(uint64_t sid, uint32_t ns,
                                               std::vector<BlockKey> keys, bool with_fusion,
                                               bool local_only) {
  LookupResult out;
  out.matched = prefix_cached(ns, keys);
  RemoteTier* remote = local_only ? nullptr : remote_for(ns);
  if (remote != nullptr && out.matched < keys.size()) {
    // The keys after the local prefix, in one batch; what the cluster holds extends it.
    std::span<const BlockKey> rest = std::span(keys).subspan(out.matched);
    StartFn2 probe = [&](std::function<void(std::vector<uint8_t>)> done) {
      remote->probe(ns, rest, std::move(done));
    };
    const auto timeout = std::chrono::milliseconds(config_.remote.lookup_timeout_ms);
    std::vector<uint8_t> found =
        co_await await_callback_for<std::vector<uint8_t>>(std::move(probe), timeout, {});
    uint32_t more = 0;
    while (more < found.size() && found[more]) ++more;
    if (found.empty()) bump(metrics_.remote_lookup_timeouts);
    bump(metrics_.remote_lookup_hits, more);
    out.matched += more;
  }
  if (with_fusion && out.matched > 0) {
    auto g = co_await get_fusion(sid, ns, keys[out.matched - 1]);
    if (g) out.fusion = *g;
  }
  co_return out;
}

awaitable<std::vector<LeaseGrant>> Engine::get(uint64_t sid, uint32_t ns,
                                               std::vector<BlockKey> keys, Placement where) {
  std::vector<LeaseGrant> grants = lease_cached(sid, ns, keys, where);
  // Blocks only a store tier holds are promoted into the host tier and leased from there.
  if (!stores_.empty())
    for (auto& g : grants)
      if (g.code == Errc::kNotFound) g = co_await promote_from_store(sid, ns, g.key);
  // A GPU get: host hits go on to the device (kept as host leases when it has no room).
  if (where.gpu) promote_to_gpu(sid, ns, grants, where.device, where.async);
  // Blocks still in flight on a device (this get's promotions, or another async get's): a
  // client that did not ask for async gets them ready.
  if (!where.async) wait_ready(grants);
  co_return grants;
}

awaitable<Result<LeaseGrant>> Engine::get_fusion(uint64_t sid, uint32_t ns, BlockKey key) {
  std::vector<BlockKey> one(1, key);  // named: GCC 12 rejects a braced list in co_await
  std::vector<LeaseGrant> g = co_await get(sid, ns, std::move(one));
  if (g.front().code != Errc::kOk)
    co_return error(g.front().code, "chunk " + key.hex() + " is not cached");
  // The lease pins the block: its layout stays valid until released.
  if (!g.front().layout.has_fusion()) {
    release(sid, std::span(&g.front().lease_id, 1));
    co_return error(Errc::kNotFound, "chunk " + key.hex() + " has no fusion state");
  }
  co_return g.front();
}

awaitable<LeaseGrant> Engine::promote_from_store(uint64_t sid, uint32_t ns, BlockKey key) {
  LeaseGrant miss;
  miss.key = key;
  miss.code = Errc::kNotFound;
  auto ticket = begin_promotion(ns, key);
  // Evicted from the host tier a moment ago and still queued for the disk: wait for the write
  // to land (bounded) rather than report a block the ladder holds as missing.
  for (int waited_ms = 0; !ticket && ticket.status().code() == Errc::kNotFound &&
                          waited_ms < kDemotionWaitMs && store_writing(NsKey{ns, key});
       ++waited_ms) {
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor,
                                    std::chrono::milliseconds(1));
    co_await timer.async_wait(boost::asio::use_awaitable);
    ticket = begin_promotion(ns, key);
  }
  if (!ticket && ticket.status().code() == Errc::kNotFound) {
    if (RemoteTier* remote = remote_for(ns)) {
      // Not on this host: fetched from the cluster (without the lock), then promoted like a
      // disk hit.
      const NsKey id{ns, key};
      LocateFn locate = [&](std::function<void(std::optional<StoredBlock>)> done) {
        remote->locate_async(id, std::move(done));
      };
      std::optional<StoredBlock> stored =
          co_await await_callback<std::optional<StoredBlock>>(std::move(locate));
      if (stored) ticket = claim_promotion(ns, key, remote, std::move(*stored));
    }
  }
  if (!ticket) co_return miss;  // in no store either (or no host space): a miss
  if (!ticket->leader) {
    bump(metrics_.promotion_waits);
    StartFn wait = [p = ticket->promotion](std::function<void(Status)> fn) {
      p->wait(std::move(fn));
    };
    Status done = co_await await_callback<Status>(std::move(wait));
    if (!done) co_return miss;
    co_return lease_cached(sid, ns, std::span(&key, 1), {}).front();
  }
  std::span<std::byte> dst(host_of(ns).data(ticket->extent), ticket->block.payload_bytes);
  // Named, not a temporary in the co_await expression: GCC 12 may destroy such temporaries
  // twice (ASan caught it on an earlier version of this code).
  StartFn start = [&](std::function<void(Status)> done) {
    ticket->from->read(ticket->block, dst, std::move(done));
  };
  Status read = co_await await_callback<Status>(std::move(start));
  co_return finish_promotion(sid, ns, key, *ticket, read);
}

awaitable<Result<uint64_t>> Engine::begin_put(uint64_t sid, PutRequest req) {
  const config::NamespaceRule& rule = rule_of(req.ns);
  PendingPut put;
  put.ns = req.ns;
  put.key = req.key;
  put.client_layout = std::move(req.client_layout);
  if (req.fusion) {
    // Fusion state belongs to a cached chunk: lease the chunk (promoting it from disk if
    // needed) until seal builds its new block.
    if (req.metadata.size() > kMaxFusionMetadataBytes)
      co_return error(Errc::kInvalidArgument, "fusion metadata over 64 KiB");
    std::vector<BlockKey> one(1, req.key);  // named: GCC 12 rejects a braced list in co_await
    std::vector<LeaseGrant> g = co_await get(sid, req.ns, std::move(one));
    if (g.front().code == Errc::kNotFound)
      co_return error(Errc::kNotFound,
                      "chunk " + req.key.hex() + " is not cached: put its KV block first");
    if (g.front().code != Errc::kOk) co_return error(g.front().code, "cannot lease the chunk");
    put.fusion = true;
    put.base_lease = g.front().lease_id;
    put.base_extent = g.front().extent;
    put.base_layout = g.front().layout.to_layout();
    put.metadata = std::move(req.metadata);
    put.stored_layout =
        plan_fusion_layout(put.base_layout, put.client_layout, rule, put.metadata.size());
  } else if (rule.disk != config::DiskPolicy::kPersist && gpu_eligible(put.client_layout) &&
             gpu_tier_for(req.ns, req.device) != nullptr) {
    // The hot tier keeps fp16/bf16 as given.  Persist namespaces stay on the host path,
    // whose seal writes through to the disk tier.
    put.gpu_device = gpu_tier_for(req.ns, req.device)->device();
    put.stored_layout = plan_gpu_layout(put.client_layout);
  } else {
    put.stored_layout = plan_stored_layout(put.client_layout, rule);
  }
  const uint64_t base_lease = put.base_lease;
  auto id = reserve_put(sid, std::move(put));
  if (!id && base_lease) release(sid, std::span(&base_lease, 1));
  co_return id;
}

awaitable<Result<uint64_t>> Engine::seal(uint64_t sid, uint64_t put_id,
                                         std::span<const std::byte> staged) {
  auto put = pending(sid, put_id);
  if (!put) co_return put.status();
  if (staged.size() != put->client_layout.total_bytes) {
    (void)abort_put(sid, put_id);
    co_return error(Errc::kInvalidArgument, "staged bytes do not match the put's layout");
  }
  // The reserved extent is this session's alone until seal or abort: encode without the lock.
  // The base block of a fusion put is leased by this session: its bytes stay put.
  BlockLayout stored = put->stored_layout;
  const config::NamespaceRule& rule = rule_of(put->ns);
  HostTier& host = host_of(put->ns);
  Status st = put->gpu_device >= 0
                  ? seal_to_gpu(gpu_tier_for(put->ns, put->gpu_device)->pool(), put->client_layout,
                                staged.data(), stored, put->extent.offset)
              : put->fusion ? encode_fusion_block(put->base_layout, host.data(put->base_extent),
                                                  put->client_layout, staged.data(), put->metadata,
                                                  rule, stored, host.data(put->extent), &codec_)
                            : encode_block(put->client_layout, staged.data(), stored,
                                           host.data(put->extent), nf4_options(rule), &codec_);
  if (!st) {
    (void)abort_put(sid, put_id);
    co_return st;
  }
  // [metrics] nf4_error_sample: the NF4 tensors are decoded again and compared with the staged
  // source while the extent is still this put's alone (after publishing it could be evicted).
  if (put->gpu_device < 0 && !put->fusion && rule.codec == Codec::kNf4 && nf4_errors_.sample()) {
    auto e = measure_nf4_error(put->client_layout, staged.data(), stored, host.data(put->extent));
    if (e && e->tensors > 0) nf4_errors_.record(namespace_name(put->ns), *e);
  }
  const uint64_t stored_bytes = stored.total_bytes;
  if (Status s = seal_put(sid, put_id, std::move(stored)); !s) co_return s;
  if (remote_ && put->gpu_device < 0 && rule.remote == config::RemotePolicy::kWriteThrough)
    write_through(put->ns, put->key);
  if (rule.disk == config::DiskPolicy::kPersist) {
    // Write-through: answer once the block is durable on the disk tier.
    StartFn start = [&](std::function<void(Status)> done) {
      Status queued = persist(put->ns, put->key, done);
      if (!queued) done(queued);
    };
    Status durable = co_await await_callback<Status>(std::move(start));
    if (!durable && durable.code() != Errc::kAlreadyExists) {
      bump(metrics_.persist_failures);
      // All or nothing: a persist put that is not durable is not stored at all.
      (void)remove_from_tiers(put->ns, std::span(&put->key, 1));
      co_return error(durable.code(), "not persisted: " + durable.message());
    }
    bump(metrics_.persisted);
  }
  co_return stored_bytes;
}

awaitable<Result<uint64_t>> Engine::seal_from_device(uint64_t sid, uint64_t put_id,
                                                     gpu::DevicePool& staging, uint64_t offset,
                                                     uint64_t bytes) {
  auto put = pending(sid, put_id);
  if (!put) co_return put.status();
  if (bytes != put->client_layout.total_bytes) {
    (void)abort_put(sid, put_id);
    co_return error(Errc::kInvalidArgument, "staged bytes do not match the put's layout");
  }
  if (put->gpu_device < 0) {
    // The host tier's format (NF4, fusion, a persist namespace, a full GPU): read the staged
    // bytes back and seal them as a host-staged put.
    std::vector<std::byte> host(bytes);
    if (Status st = staging.read(offset, host); !st) {
      (void)abort_put(sid, put_id);
      co_return error(st.code(), "device staging to host: " + st.message());
    }
    const std::span<const std::byte> view(host);  // named: GCC 12 and co_await temporaries
    co_return co_await seal(sid, put_id, view);
  }
  // The reserved extent is this session's alone until seal or abort: copy without the lock.
  BlockLayout stored = put->stored_layout;
  for (auto& t : stored.tensors) t.checksum = 0;
  GpuTier* tier = gpu_tier_for(put->ns, put->gpu_device);
  if (Status st = tier->pool().copy_from(staging, offset, put->extent.offset, bytes); !st) {
    (void)abort_put(sid, put_id);
    co_return error(st.code(), "device staging to gpu: " + st.message());
  }
  const uint64_t stored_bytes = stored.total_bytes;
  if (Status s = seal_put(sid, put_id, std::move(stored)); !s) co_return s;
  bump(metrics_.gpu_device_puts);
  bump(metrics_.gpu_device_put_bytes, bytes);
  co_return stored_bytes;
}

}  // namespace kvtier
