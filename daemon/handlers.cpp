// Data-plane request handlers of a Session: hello, arenas, lookup, put, get, release, remove.
#include <unistd.h>

#include "common/frame.h"
#include "common/wire.h"
#include "engine/await.h"
#include "engine/block_codec.h"
#include "engine/gpu_moves.h"
#include "daemon/server.h"
#include "daemon/session.h"

using boost::asio::awaitable;

namespace kvtier {

namespace {
using StartFn = std::function<void(std::function<void(Status)>)>;
constexpr size_t kMaxKeysPerRequest = 1 << 16;

Result<std::vector<BlockKey>> request_keys(const flatbuffers::Vector<const wire::Key128*>* keys) {
  if (keys == nullptr || keys->size() == 0) return error(Errc::kInvalidArgument, "no keys given");
  if (keys->size() > kMaxKeysPerRequest)
    return error(Errc::kLimit, "more than 65536 keys in one request");
  return wire_util::keys_from_wire(keys);
}
}  // namespace

void Session::on_hello(const wire::HelloReq& req, Reply& r) {
  if (req.protocol() != kProtocolVersion) {
    return r.fail(error(Errc::kProtocol, "client speaks protocol " +
                                             std::to_string(req.protocol()) + ", daemon " +
                                             std::to_string(kProtocolVersion)));
  }
  auto& fbb = r.fbb;
  const Engine& engine = server_.engine();
  // Only the arenas (isolation domains) this peer may map are named to it.
  std::vector<flatbuffers::Offset<wire::ArenaInfo>> arenas;
  for (size_t d = 0; d < engine.host_tiers().size(); ++d) {
    if (!engine.may_map(peer_, d)) continue;
    const HostTier& h = *engine.host_tiers()[d];
    arenas.push_back(wire::CreateArenaInfo(fbb, h.arena_id(), h.arena().size()));
  }
  std::vector<flatbuffers::Offset<wire::GpuPoolInfo>> pools;
  for (const auto& t : engine.gpu_tiers())
    if (engine.may_map(peer_, t->domain())) pools.push_back(gpu_pool_info(fbb, *t));
  const gpu::DeviceBackend* backend = server_.engine().gpu_backend();
  auto inst = wire_util::to_wire(server_.instance());
  r.set(wire::Response::HelloResp,
        wire::CreateHelloResp(fbb, kProtocolVersion, &inst, id_, fbb.CreateVector(arenas),
                              server_.config().session.staging_bytes,
                              server_.config().daemon.max_message_bytes, fbb.CreateVector(pools),
                              fbb.CreateString(backend ? backend->name() : "")));
}

void Session::on_map_arena(const wire::MapArenaReq& req, Reply& r) {
  const Engine& engine = server_.engine();
  const auto& hosts = engine.host_tiers();
  if (req.id() >= hosts.size())
    return r.fail(error(Errc::kNotFound, "no arena " + std::to_string(req.id())));
  // An isolation domain's arena is mapped only by peers its namespace rules allow: a tenant
  // cannot read another's bytes by mapping the arena that holds them.
  if (!engine.may_map(peer_, req.id())) {
    bump(server_.metrics().permission_denied);
    return r.fail(error(
        Errc::kPermissionDenied,
        "uid " + std::to_string(peer_.uid) + " may not map arena " + std::to_string(req.id())));
  }
  const HostTier& host = *hosts[req.id()];
  auto fd = host.arena().open_readonly_fd();
  if (!fd) return r.fail(fd.status());
  r.fds.push_back(*fd);
  auto info = wire::CreateArenaInfo(r.fbb, host.arena_id(), host.arena().size());
  r.set(wire::Response::MapArenaResp, wire::CreateMapArenaResp(r.fbb, info));
}

awaitable<void> Session::on_lookup(const wire::LookupReq& req, Reply& r) {
  auto ns = server_.engine().resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  auto keys = request_keys(req.keys());
  if (!keys) co_return r.fail(keys.status());
  uint32_t matched = server_.engine().lookup(*ns, *keys);
  flatbuffers::Offset<wire::LeasedBlock> fusion;
  if (req.with_fusion() && matched > 0) {
    // One round trip for the common path: the fusion state of the last matched chunk.
    LeaseGrant g = co_await lease_one(*ns, (*keys)[matched - 1]);
    if (g.code == Errc::kOk && !has_fusion(*g.layout)) {
      server_.engine().release(id_, std::span(&g.lease_id, 1));
    } else if (g.code == Errc::kOk) {
      fusion = leased_block(r.fbb, g);
    }
  }
  r.set(wire::Response::LookupResp, wire::CreateLookupResp(r.fbb, matched, fusion));
}

awaitable<void> Session::on_put_begin(const wire::PutBeginReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  if (req.key() == nullptr) co_return r.fail(error(Errc::kInvalidArgument, "put without a key"));
  PendingPut put;
  put.ns = *ns;
  put.key = wire_util::from_wire(*req.key());
  put.client_layout = wire_util::from_wire(req.layout());
  const uint64_t staging_bytes = server_.config().session.staging_bytes;
  if (Status st = validate_put_layout(put.client_layout, staging_bytes); !st) co_return r.fail(st);
  const config::NamespaceRule& rule = server_.engine().rule_of(*ns);
  if (req.fusion()) {
    // Fusion state belongs to a cached chunk: lease the chunk (promoting it from disk if
    // needed) until seal builds its new block.
    const auto* md = req.metadata();
    if (md && md->size() > kMaxFusionMetadataBytes)
      co_return r.fail(error(Errc::kInvalidArgument, "fusion metadata over 64 KiB"));
    LeaseGrant g = co_await lease_one(*ns, put.key);
    if (g.code == Errc::kNotFound)
      co_return r.fail(error(Errc::kNotFound,
                             "chunk " + put.key.hex() + " is not cached: put its KV block first"));
    if (g.code != Errc::kOk) co_return r.fail(error(g.code, "cannot lease the chunk"));
    put.fusion = true;
    put.base_lease = g.lease_id;
    put.base_extent = g.extent;
    put.base_layout = *g.layout;
    if (md) {
      auto* p = reinterpret_cast<const std::byte*>(md->data());
      put.metadata.assign(p, p + md->size());
    }
    put.stored_layout =
        plan_fusion_layout(put.base_layout, put.client_layout, rule, put.metadata.size());
  } else if (rule.disk != config::DiskPolicy::kPersist && gpu_eligible(put.client_layout) &&
             engine.gpu_tier_for(*ns, req.device()) != nullptr) {
    // The hot tier keeps fp16/bf16 as given.  Persist namespaces stay on the host path,
    // whose seal writes through to the disk tier.
    put.gpu_device = engine.gpu_tier_for(*ns, req.device())->device();
    put.stored_layout = plan_gpu_layout(put.client_layout);
  } else {
    put.stored_layout = plan_stored_layout(put.client_layout, rule);
  }
  const uint64_t base_lease = put.fusion ? put.base_lease : 0;
  auto fail = [&](Status st) {
    if (base_lease) engine.release(id_, std::span(&base_lease, 1));
    r.fail(std::move(st));
  };
  if (!staging_) {
    auto s = Staging::create(staging_bytes);
    if (!s) co_return fail(s.status());
    staging_ = std::move(s).value();
  }
  auto off = staging_->allocate(put.client_layout.total_bytes);
  if (!off) co_return fail(off.status());
  put.staging_offset = *off;
  auto put_id = engine.begin_put(id_, std::move(put));
  if (!put_id) {
    staging_->free(*off);
    co_return fail(put_id.status());
  }
  bool attach = !staging_sent_;
  if (attach) {
    int fd = ::dup(staging_->fd());
    if (fd < 0) {
      (void)engine.abort_put(id_, *put_id);  // releases the chunk's lease too
      staging_->free(*off);
      co_return r.fail(error(Errc::kIo, "dup staging fd failed"));
    }
    r.fds.push_back(fd);
    staging_sent_ = true;
  }
  r.set(wire::Response::PutBeginResp,
        wire::CreatePutBeginResp(r.fbb, *put_id, *off, attach, staging_->size()));
}

awaitable<void> Session::on_seal(const wire::SealReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto put = engine.pending(id_, req.put_id());
  if (!put) co_return r.fail(put.status());
  // The reserved extent is this session's alone until seal or abort: copy without the lock.
  BlockLayout stored = put->stored_layout;
  const config::NamespaceRule& rule = engine.rule_of(put->ns);
  // The base block of a fusion put is leased by this session: its bytes stay put.
  HostTier& host = engine.host_of(put->ns);
  Status st =
      put->gpu_device >= 0
          ? seal_to_gpu(engine.gpu_tier_for(put->ns, put->gpu_device)->pool(), put->client_layout,
                        staging_->data(put->staging_offset), stored, put->extent.offset)
      : put->fusion ? encode_fusion_block(put->base_layout, host.data(put->base_extent),
                                          put->client_layout, staging_->data(put->staging_offset),
                                          put->metadata, rule, stored, host.data(put->extent))
                    : encode_block(put->client_layout, staging_->data(put->staging_offset), stored,
                                   host.data(put->extent), rule.nf4_double_quant);
  staging_->free(put->staging_offset);
  if (!st) {
    (void)engine.abort_put(id_, req.put_id());
    co_return r.fail(st);
  }
  uint64_t stored_bytes = stored.total_bytes;
  if (Status s = engine.seal_put(id_, req.put_id(), std::move(stored)); !s) co_return r.fail(s);
  if (rule.disk == config::DiskPolicy::kPersist) {
    // Write-through: answer once the block is durable on the disk tier.
    // Named, not a temporary in the co_await expression: GCC 12 may destroy such temporaries
    // twice (ASan caught it on an earlier version of this code).
    StartFn start = [&](std::function<void(Status)> done) {
      Status queued = engine.persist(put->ns, put->key, done);
      if (!queued) done(queued);
    };
    Status durable = co_await await_callback<Status>(std::move(start));
    if (!durable && durable.code() != Errc::kAlreadyExists) {
      bump(server_.metrics().persist_failures);
      // All or nothing: a persist put that is not durable is not stored at all.
      (void)engine.remove(put->ns, std::span(&put->key, 1));
      co_return r.fail(error(durable.code(), "not persisted: " + durable.message()));
    }
    bump(server_.metrics().persisted);
  }
  r.set(wire::Response::SealResp, wire::CreateSealResp(r.fbb, stored_bytes));
}

void Session::on_abort(const wire::AbortReq& req, Reply& r) {
  auto put = server_.engine().pending(id_, req.put_id());
  if (!put) return r.fail(put.status());
  staging_->free(put->staging_offset);
  if (Status s = server_.engine().abort_put(id_, req.put_id()); !s) return r.fail(s);
  r.set(wire::Response::AbortResp, wire::CreateAbortResp(r.fbb));
}

flatbuffers::Offset<wire::LeasedBlock> leased_block(flatbuffers::FlatBufferBuilder& fbb,
                                                    const LeaseGrant& g) {
  auto key = wire_util::to_wire(g.key);
  if (g.code != Errc::kOk) return wire::CreateLeasedBlock(fbb, &key, static_cast<uint16_t>(g.code));
  // g.layout stays valid: this session holds the lease and only it can release it.
  auto layout = wire_util::to_wire(fbb, *g.layout);
  return wire::CreateLeasedBlock(fbb, &key, 0, g.lease_id, g.extent.arena, g.extent.offset, layout,
                                 static_cast<uint8_t>(g.tier), g.device);
}

bool has_fusion(const BlockLayout& layout) {
  for (const auto& t : layout.tensors)
    if (is_fusion_tensor(t.name)) return true;
  return false;
}

awaitable<LeaseGrant> Session::lease_one(uint32_t ns, BlockKey key) {
  LeaseGrant g = server_.engine().get(id_, ns, std::span(&key, 1)).front();
  if (g.code == Errc::kNotFound && server_.engine().disk() != nullptr) g = co_await promote(ns, key);
  co_return g;
}

awaitable<LeaseGrant> Session::promote(uint32_t ns, BlockKey key) {
  Engine& engine = server_.engine();
  LeaseGrant miss;
  miss.key = key;
  miss.code = Errc::kNotFound;
  auto ticket = engine.begin_promotion(ns, key);
  if (!ticket) co_return miss;  // not on disk either (or no host space): a miss
  if (!ticket->leader) {
    bump(server_.metrics().promotion_waits);
    StartFn wait = [p = ticket->promotion](std::function<void(Status)> fn) {
      p->wait(std::move(fn));
    };
    Status done = co_await await_callback<Status>(std::move(wait));
    if (!done) co_return miss;
    co_return engine.get(id_, ns, std::span(&key, 1)).front();
  }
  DiskTier* disk = engine.disk();
  std::span<std::byte> dst(engine.host_of(ns).data(ticket->extent), ticket->entry.payload_bytes);
  StartFn start = [&](std::function<void(Status)> done) {
    disk->read(ticket->entry, dst, std::move(done));
  };
  Status read = co_await await_callback<Status>(std::move(start));
  co_return engine.finish_promotion(id_, ns, key, *ticket, read);
}

awaitable<void> Session::on_get(const wire::GetReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  auto keys = request_keys(req.keys());
  if (!keys) co_return r.fail(keys.status());
  Placement where;
  if (req.want() > 1) co_return r.fail(error(Errc::kInvalidArgument, "unknown placement"));
  if (req.want() == 1) {
    if (Status st = check_gpu_device(engine, req.device()); !st) co_return r.fail(st);
    where = Placement{true, req.device()};
  }
  auto grants = engine.get(id_, *ns, *keys, where);
  // Blocks only on the disk tier are promoted into the host tier and leased from there.
  for (auto& g : grants)
    if (g.code == Errc::kNotFound && engine.disk() != nullptr) g = co_await promote(*ns, g.key);
  // A GPU get: host hits go on to the device (kept as host leases when it has no room).
  if (where.gpu)
    for (auto& g : grants)
      if (g.code == Errc::kOk && g.tier == TierKind::kHost)
        g = engine.promote_to_gpu(id_, *ns, g, where.device);
  auto& fbb = r.fbb;
  std::vector<flatbuffers::Offset<wire::LeasedBlock>> blocks;
  blocks.reserve(grants.size());
  for (const auto& g : grants) blocks.push_back(leased_block(fbb, g));
  r.set(wire::Response::GetResp, wire::CreateGetResp(fbb, fbb.CreateVector(blocks)));
}

void Session::on_release(const wire::ReleaseReq& req, Reply& r) {
  uint32_t n = 0;
  if (req.lease_ids() != nullptr) {
    std::vector<uint64_t> ids(req.lease_ids()->begin(), req.lease_ids()->end());
    n = server_.engine().release(id_, ids);
  }
  r.set(wire::Response::ReleaseResp, wire::CreateReleaseResp(r.fbb, n));
}

void Session::on_remove(const wire::RemoveReq& req, Reply& r) {
  auto ns = server_.engine().resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) return r.fail(ns.status());
  auto keys = request_keys(req.keys());
  if (!keys) return r.fail(keys.status());
  auto c = server_.engine().remove(*ns, *keys);
  // A removed chunk's embedding entries go with it (the index is never called under the
  // engine's lock).
  if (SemanticIndex* index = server_.engine().index())
    for (const auto& k : *keys) index->remove(wire_util::str(req.namespace_()), k);
  r.set(wire::Response::RemoveResp, wire::CreateRemoveResp(r.fbb, c.removed, c.deferred));
}

}  // namespace kvtier
