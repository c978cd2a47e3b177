#include "daemon/admin.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "common/frame.h"
#include "common/names.h"
#include "common/wire.h"
#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace kvtier {
namespace {

using Handler = void (*)(Server&, const wire::RequestMsg&, Reply&);

void text(Reply& r, const nlohmann::json& j) {
  r.set(wire::Response::TextResp, wire::CreateTextResp(r.fbb, r.fbb.CreateString(json_text(j))));
}

void on_stats(Server& s, const wire::RequestMsg&, Reply& r) {
  auto j = s.engine().stats_json();
  j["instance"] = s.instance().hex();
  j["pid"] = ::getpid();
  j["started_unix_ms"] = s.started_unix_ms();
  text(r, j);
}

void on_health(Server& s, const wire::RequestMsg&, Reply& r) {
  using namespace std::chrono;
  uint64_t now = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  auto u = s.engine().host().usage();
  nlohmann::json j = {
      {"status", s.state()},
      {"version", KVTIER_VERSION},
      {"protocol", kProtocolVersion},
      {"pid", ::getpid()},
      {"uptime_s", (now - s.started_unix_ms()) / 1000},
      {"sessions", s.engine().session_count()},
      {"tiers",
       {{"host",
         {{"backend", "posix-shm"},
          {"shm", "/dev/shm/" + s.engine().host().arena().name()},
          // Clients map the object the daemon holds open, so they are served either way; a
          // name removed or replaced by someone else is still worth an operator's look.
          {"shm_name", s.engine().host().arena().name_intact() ? "ok" : "replaced or removed"},
          {"capacity_bytes", u.capacity_bytes},
          {"used_bytes", u.used_bytes}}},
        {"gpu", s.engine().gpu_json()},
        {"disk", s.engine().disk()
                     ? nlohmann::json{{"backend", s.engine().disk()->backend()},
                                      {"dir", s.config().disk_dir().string()}}
                     : nlohmann::json{{"backend", "none"}, {"reason", s.engine().disk_status()}}},
        {"remote", s.engine().remote()
                       ? nlohmann::json{{"backend", "redis-cluster"},
                                        {"status", s.engine().remote()->connected()
                                                       ? "connected"
                                                       : "not connected (retrying)"}}
                       : nlohmann::json{{"backend", "none"}, {"reason", "no [remote] seeds"}}}}},
      {"nf4",
       {{"cpu_path", nf4::active_cpu_path()},
        {"cuda", nf4::cuda::available() ? "available" : "unavailable (no driver or device)"}}},
  };
  text(r, j);
}

void on_clients(Server& s, const wire::RequestMsg&, Reply& r) {
  text(r, s.engine().clients_json());
}

void on_config(Server& s, const wire::RequestMsg&, Reply& r) {
  text(r, nlohmann::json{{"toml", s.config().to_toml()}});
}

void on_list(Server& s, const wire::RequestMsg& msg, Reply& r) {
  const auto* req = msg.body_as_ListReq();
  if (req->namespace_() && req->namespace_()->size() > 0)
    if (Status st = check_name("namespace", req->namespace_()->string_view(), kMaxNamespaceBytes);
        !st)
      return r.fail(st);
  text(r, s.engine().list_json(wire_util::str(req->namespace_()), req->limit(), req->fusion_only(),
                               req->pinned_only()));
}

void on_evict(Server& s, const wire::RequestMsg& msg, Reply& r) {
  const auto* req = msg.body_as_EvictReq();
  std::string ns = wire_util::str(req->namespace_());
  if (!ns.empty())
    if (Status st = check_name("namespace", ns, kMaxNamespaceBytes); !st) return r.fail(st);
  auto keys = wire_util::keys_from_wire(req->keys());
  if (!req->all() && ns.empty())
    return r.fail(error(Errc::kInvalidArgument, "evict needs a namespace, keys, or all"));
  // tier: 0 = every tier, 1 = host, 2 = disk, 3 = GPU.
  const uint8_t tier = req->tier();
  if (tier > 3) return r.fail(error(Errc::kInvalidArgument, "unknown tier"));
  auto c = s.engine().evict(ns.empty() ? std::nullopt : std::optional(ns), keys, req->all(),
                            tier == 0 || tier == 1, tier == 0 || tier == 2, tier == 0 || tier == 3);
  // Skipped (leased) blocks of both memory tiers are reported together.
  r.set(wire::Response::EvictResp,
        wire::CreateEvictResp(r.fbb, static_cast<uint32_t>(c.host.evicted),
                              static_cast<uint32_t>(c.host.skipped_leased + c.gpu.skipped_leased),
                              c.host.bytes + c.gpu.bytes, static_cast<uint32_t>(c.disk),
                              static_cast<uint32_t>(c.gpu.evicted)));
}

struct Command {
  wire::Request type;
  const char* name;
  bool admin_only;
  Handler handler;
};

// The admin command table (kvtierctl mirrors these names).
constexpr Command kCommands[] = {
    {wire::Request::StatsReq, "stats", false, on_stats},
    {wire::Request::HealthReq, "health", false, on_health},
    {wire::Request::ListReq, "ls", true, on_list},
    {wire::Request::EvictReq, "evict", true, on_evict},
    {wire::Request::ClientsReq, "clients", true, on_clients},
    {wire::Request::ConfigReq, "config", true, on_config},
};

}  // namespace

bool is_admin(const Server& server, const PeerInfo& peer) {
  const auto& a = server.config().access;
  auto has = [](const auto& v, auto x) { return std::find(v.begin(), v.end(), x) != v.end(); };
  if (has(a.admin_uids, peer.uid) || has(a.admin_gids, peer.gid)) return true;
  for (gid_t g : peer.groups)
    if (has(a.admin_gids, g)) return true;
  return false;
}

void handle_admin(Server& server, const PeerInfo& peer, const wire::RequestMsg& msg, Reply& r) {
  for (const auto& c : kCommands) {
    if (c.type != msg.body_type()) continue;
    if (c.admin_only && !is_admin(server, peer)) {
      bump(server.metrics().permission_denied);
      return r.fail(error(Errc::kPermissionDenied, std::string("'") + c.name +
                                                       "' needs an admin uid or group (uid " +
                                                       std::to_string(peer.uid) + ")"));
    }
    return c.handler(server, msg, r);
  }
  r.fail(error(Errc::kProtocol, "unknown admin request"));
}

}  // namespace kvtier
