// Lookups: from the daemon's shared lookup index (no round trip) or from the daemon.
//
// The first lookup of a namespace resolves it (ResolveReq: its id, its isolation domain, and
// whether the index lists every tier the daemon would ask) and maps that domain's index
// (MapIndexReq, a read-only memfd).  Later lookups read the mapping under index_mu only.  A
// mapping the daemon retired (it published a bigger index, or it stopped) is replaced at the
// next lookup; when that fails the lookup goes to the daemon, which reports the failure.  A
// daemon that died (SIGKILL, a crash) could not retire its indexes: the liveness page mapped
// with them says it is gone, and lookups go to the daemon (and fail) from then on.
#include <unistd.h>

#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {

Result<uint32_t> Client::lookup(std::string_view ns, std::span<const BlockKey> keys,
                                LookupOptions options) {
  if (keys.empty()) return 0u;
  if (options.source != LookupSource::kDaemon && impl_->lookup_index) {
    if (auto n = impl_->index_lookup(ns, keys, options)) return *n;
  }
  if (options.source == LookupSource::kIndex)
    return error(Errc::kUnavailable, "no lookup index for namespace '" + std::string(ns) + "'");
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb(64 + keys.size() * 16);
  auto req = wire::CreateLookupReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                   wire_util::keys_to_wire(fbb, keys), false, options.local_only);
  auto resp = impl_->call(fbb, wire::Request::LookupReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_LookupResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad lookup reply");
  return body->matched();
}

bool Client::uses_lookup_index(std::string_view ns) {
  if (!impl_->lookup_index) return false;
  const BlockKey none{};
  LookupOptions o;
  o.source = LookupSource::kIndex;
  return impl_->index_lookup(ns, std::span(&none, 1), o).has_value();
}

std::optional<uint32_t> Client::Impl::index_lookup(std::string_view ns,
                                                   std::span<const BlockKey> keys,
                                                   const LookupOptions& options) {
  // At most: resolve, map (or remap), answer.
  for (int step = 0; step < 3; ++step) {
    NsIndex ni;
    bool known = false;
    std::shared_ptr<const LookupIndexView> view;
    std::shared_ptr<const LivenessView> live;
    {
      MutexLock lock(index_mu);
      live = liveness;
      if (auto it = ns_index.find(ns); it != ns_index.end()) {
        known = true;
        ni = it->second;
        if (auto v = index_views.find(ni.domain); v != index_views.end()) view = v->second;
      }
    }
    if (!known) {
      if (!resolve_for_index(ns)) return std::nullopt;
      continue;
    }
    if (!ni.usable) return std::nullopt;
    if (live && !live->alive()) return std::nullopt;  // the daemon is gone
    if (!view || view->retired() != kIndexLive) {
      if (!map_index(ni.domain)) return std::nullopt;
      continue;
    }
    const uint32_t n = view->prefix(ni.ns_id, keys);
    // The keys after the prefix may be in the remote tier, which only the daemon asks.
    if (n < keys.size() && !ni.complete && !options.local_only &&
        options.source != LookupSource::kIndex)
      return std::nullopt;
    return n;
  }
  return std::nullopt;
}

bool Client::Impl::resolve_for_index(std::string_view ns) {
  NsIndex ni;
  {
    MutexLock lock(mu);
    flatbuffers::FlatBufferBuilder fbb(64 + ns.size());
    auto req = wire::CreateResolveReq(fbb, fbb.CreateString(ns.data(), ns.size()));
    auto resp = call(fbb, wire::Request::ResolveReq, req.Union());
    if (!resp) {
      // The daemon answered (refused the namespace, or an older daemon without the request):
      // this namespace's lookups go to the daemon, which says why.  A failed connection is
      // not recorded.
      if (resp.status().code() == Errc::kUnavailable || resp.status().code() == Errc::kIo)
        return false;
    } else if (const auto* body = (*resp)->msg->body_as_ResolveResp()) {
      ni.usable = body->index();
      ni.ns_id = body->ns_id();
      ni.domain = body->domain();
      ni.complete = body->complete();
    }
  }
  MutexLock lock(index_mu);
  ns_index.insert_or_assign(std::string(ns), ni);
  return true;
}

bool Client::Impl::map_index(uint32_t domain) {
  std::shared_ptr<const LookupIndexView> view;
  std::shared_ptr<const LivenessView> live;
  {
    MutexLock lock(mu);
    flatbuffers::FlatBufferBuilder fbb(64);
    auto req = wire::CreateMapIndexReq(fbb, domain);
    auto resp = call(fbb, wire::Request::MapIndexReq, req.Union());
    if (!resp) {
      if (resp.status().code() != Errc::kUnavailable && resp.status().code() != Errc::kIo) {
        // Refused by the daemon: the namespaces of this domain ask the daemon from now on.
        MutexLock ilock(index_mu);
        for (auto& [name, ni] : ns_index)
          if (ni.domain == domain) ni.usable = false;
      }
      return false;
    }
    const auto* body = (*resp)->msg->body_as_MapIndexResp();
    int fd = (*resp)->take_fd();
    if (fd < 0 || body == nullptr) {
      if (fd >= 0) ::close(fd);
      return false;
    }
    auto v = LookupIndexView::map(fd);
    ::close(fd);
    if (!v || (*v)->domain() != domain) return false;
    view = std::move(v).value();
    if (body->liveness()) {
      int lfd = (*resp)->take_fd();
      if (lfd < 0) return false;
      auto l = LivenessView::map(lfd);
      ::close(lfd);
      if (!l) return false;
      live = std::move(l).value();
    }
  }
  MutexLock lock(index_mu);
  index_views[domain] = std::move(view);
  if (live) liveness = std::move(live);
  return true;
}

}  // namespace kvtier
