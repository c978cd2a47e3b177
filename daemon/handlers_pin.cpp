// Handlers of pins (docs/protocol.md, "Pins"): keep cached blocks from eviction in one tier.
// A pin is the engine's, not the connection's: it outlives the client that made it.  The
// namespace's access rule decides as for a put: a peer that may not write the namespace may
// not pin or unpin its blocks.
#include "common/wire.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace kvtier {

boost::asio::awaitable<void> Session::on_pin(const wire::PinReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  auto keys = request_keys(req.keys());
  if (!keys) co_return r.fail(keys.status());
  Placement where;
  if (req.tier() > 1) co_return r.fail(error(Errc::kInvalidArgument, "unknown pin tier"));
  if (req.tier() == 0) {  // the GPU tier of `device`
    if (Status st = check_gpu_device(engine, req.device()); !st) co_return r.fail(st);
    where = Placement{true, req.device()};
  }
  Result<Engine::PinResult> pinned =
      co_await engine.pin(id_, *ns, std::move(*keys), req.ttl_ms(), where);
  if (!pinned) co_return r.fail(pinned.status());
  r.set(wire::Response::PinResp, wire::CreatePinResp(r.fbb, pinned->pinned, pinned->refreshed,
                                                     pinned->pinned_bytes, pinned->quota_bytes));
}

void Session::on_unpin(const wire::UnpinReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) return r.fail(ns.status());
  auto keys = request_keys(req.keys());
  if (!keys) return r.fail(keys.status());
  const uint32_t n = engine.unpin(*ns, *keys);
  r.set(wire::Response::UnpinResp, wire::CreateUnpinResp(r.fbb, n));
}

}  // namespace kvtier
