// Data-plane request handlers of a Session: hello, arenas, lookup, put, get, release, remove.
#include <unistd.h>

#include "common/frame.h"
#include "common/wire.h"
#include "daemon/server.h"
#include "daemon/session.h"

using boost::asio::awaitable;

namespace kvtier {

namespace {
constexpr size_t kMaxKeysPerRequest = 1 << 16;
}  // namespace

Result<std::vector<BlockKey>> request_keys(const flatbuffers::Vector<const wire::Key128*>* keys) {
  if (keys == nullptr || keys->size() == 0) return error(Errc::kInvalidArgument, "no keys given");
  if (keys->size() > kMaxKeysPerRequest)
    return error(Errc::kLimit, "more than 65536 keys in one request");
  return wire_util::keys_from_wire(keys);
}

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
                              fbb.CreateString(backend ? backend->name() : ""),
                              /*carried_releases=*/true));
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
  auto found = co_await server_.engine().lookup(id_, *ns, std::move(*keys), req.with_fusion(),
                                                req.local_only());
  flatbuffers::Offset<wire::LeasedBlock> fusion;
  if (found.fusion) fusion = leased_block(r.fbb, *found.fusion);
  r.set(wire::Response::LookupResp, wire::CreateLookupResp(r.fbb, found.matched, fusion));
}

awaitable<void> Session::on_put_begin(const wire::PutBeginReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  if (req.key() == nullptr) co_return r.fail(error(Errc::kInvalidArgument, "put without a key"));
  Engine::PutRequest put;
  put.ns = *ns;
  put.key = wire_util::from_wire(*req.key());
  put.client_layout = wire_util::from_wire(req.layout());
  put.device = req.device();
  put.fusion = req.fusion();
  const uint64_t staging_bytes = server_.config().session.staging_bytes;
  if (Status st = validate_put_layout(put.client_layout, staging_bytes); !st) co_return r.fail(st);
  if (const auto* md = req.metadata(); md && put.fusion) {
    if (md->size() > kMaxFusionMetadataBytes)
      co_return r.fail(error(Errc::kInvalidArgument, "fusion metadata over 64 KiB"));
    auto* p = reinterpret_cast<const std::byte*>(md->data());
    put.metadata.assign(p, p + md->size());
  }
  if (!staging_) {
    auto st = Staging::create(staging_bytes);
    if (!st) co_return r.fail(st.status());
    staging_ = std::move(st).value();
  }
  const uint64_t bytes = put.client_layout.total_bytes;
  auto off = staging_->allocate(bytes);
  if (!off) co_return r.fail(off.status());
  auto put_id = co_await engine.begin_put(id_, std::move(put));
  if (!put_id) {
    staging_->free(*off);
    co_return r.fail(put_id.status());
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
  staged_[*put_id] = Staged{*off, bytes};
  r.set(wire::Response::PutBeginResp,
        wire::CreatePutBeginResp(r.fbb, *put_id, *off, attach, staging_->size()));
}

awaitable<void> Session::on_seal(const wire::SealReq& req, Reply& r) {
  auto stored = co_await seal_staged(req.put_id());
  if (!stored) co_return r.fail(stored.status());
  r.set(wire::Response::SealResp, wire::CreateSealResp(r.fbb, *stored));
}

void Session::on_abort(const wire::AbortReq& req, Reply& r) {
  auto it = staged_.find(req.put_id());
  if (it == staged_.end())
    return r.fail(error(Errc::kNotFound, "no pending put " + std::to_string(req.put_id())));
  free_staged(it->second);
  staged_.erase(it);
  if (Status s = server_.engine().abort_put(id_, req.put_id()); !s) return r.fail(s);
  r.set(wire::Response::AbortResp, wire::CreateAbortResp(r.fbb));
}

flatbuffers::Offset<wire::LeasedBlock> leased_block(flatbuffers::FlatBufferBuilder& fbb,
                                                    const LeaseGrant& g) {
  auto key = wire_util::to_wire(g.key);
  if (g.code != Errc::kOk) return wire::CreateLeasedBlock(fbb, &key, static_cast<uint16_t>(g.code));
  // g.layout stays valid: this session holds the lease and only it can release it.
  auto layout = wire_util::to_wire(fbb, g.layout);
  return wire::CreateLeasedBlock(fbb, &key, 0, g.lease_id, g.extent.arena, g.extent.offset, layout,
                                 static_cast<uint8_t>(g.tier), g.device, g.ready_event);
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
    where = Placement{true, req.device(), req.async()};
  }
  auto grants = co_await engine.get(id_, *ns, std::move(*keys), where);
  auto& fbb = r.fbb;
  std::vector<flatbuffers::Offset<wire::LeasedBlock>> blocks;
  blocks.reserve(grants.size());
  for (const auto& g : grants) blocks.push_back(leased_block(fbb, g));
  r.set(wire::Response::GetResp, wire::CreateGetResp(fbb, fbb.CreateVector(blocks)));
}

void Session::on_release(const wire::ReleaseReq& req, Reply& r) {
  uint32_t n = 0;
  if (req.lease_ids() != nullptr) {
    std::vector<uint64_t> ids = wire_util::scalars(req.lease_ids());
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
  r.set(wire::Response::RemoveResp, wire::CreateRemoveResp(r.fbb, c.removed, c.deferred));
}

}  // namespace kvtier
