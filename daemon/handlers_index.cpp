// Handlers of the shared lookup index (docs/protocol.md, "Lookup index"): a namespace resolved
// to its id, and the read-only descriptor of an isolation domain's index.
#include "common/wire.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace kvtier {

void Session::on_resolve(const wire::ResolveReq& req, Reply& r) {
  Engine& engine = server_.engine();
  // The namespace's access rule decides, as for a lookup: a namespace this peer may not read
  // has no id for it.
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) return r.fail(ns.status());
  bump(server_.metrics().resolves);
  const uint32_t domain = engine.domain_of(*ns);
  const bool index = engine.lookup_index(domain) != nullptr;
  // The remote tier is not listed: lookups of a namespace that uses it still ask the daemon
  // for the keys after the index's prefix.
  const bool complete =
      engine.remote() == nullptr || engine.rule_of(*ns).remote == config::RemotePolicy::kOff;
  r.set(wire::Response::ResolveResp, wire::CreateResolveResp(r.fbb, *ns, domain, index, complete));
}

void Session::on_map_index(const wire::MapIndexReq& req, Reply& r) {
  Engine& engine = server_.engine();
  LookupIndex* idx = engine.lookup_index(req.domain());
  if (idx == nullptr) {
    if (!server_.config().daemon.lookup_index)
      return r.fail(error(Errc::kUnavailable, "daemon.lookup_index is off"));
    return r.fail(error(Errc::kNotFound, "no lookup index " + std::to_string(req.domain())));
  }
  // An index lists the blocks of one isolation domain: only peers that may map its arena
  // may map it.
  if (!engine.may_map(peer_, req.domain())) {
    bump(server_.metrics().permission_denied);
    return r.fail(error(Errc::kPermissionDenied, "uid " + std::to_string(peer_.uid) +
                                                     " may not map lookup index " +
                                                     std::to_string(req.domain())));
  }
  auto fd = idx->open_readonly_fd();
  if (!fd) return r.fail(fd.status());
  // The liveness page rides along: a client stops trusting the index when kvtierd is gone,
  // even when it died too suddenly to mark the index stopped.
  Result<int> live_fd = error(Errc::kUnavailable, "no liveness page");
  if (engine.liveness() != nullptr) live_fd = engine.liveness()->open_readonly_fd();
  // The generation of the descriptor sent: read after it, so it is at least as new as the
  // memfd's (a client trusts the header of what it maps, not this).
  const LookupIndex::Stats st = idx->stats();
  r.fds.push_back(*fd);
  if (live_fd) r.fds.push_back(*live_fd);
  bump(server_.metrics().index_maps);
  r.set(wire::Response::MapIndexResp,
        wire::CreateMapIndexResp(r.fbb, req.domain(), st.generation, st.slots, st.bytes,
                                 live_fd.is_ok()));
}

}  // namespace kvtier
