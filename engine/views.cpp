// JSON views of the cache for stats, `kvtierctl clients` and `kvtierctl ls`.
#include "common/counters_json.h"
#include "engine/engine.h"
#include "tiers/gpu/device_identity.h"
#include "tiers/tier_counters.h"

namespace kvtier {

nlohmann::json Engine::gpu_json() const {
  nlohmann::json j = {{"requested", gpu_.requested},
                      {"backend", gpu_.backend ? gpu_.backend->name() : "none"},
                      {"status", gpu_.status}};
  if (gpu_.backend) {
    const gpu::ProbeReport& p = gpu_.backend->probe();
    auto devices = nlohmann::json::array();
    for (const auto& d : p.devices) {
      devices.push_back(
          {{"index", d.index},
           {"uuid", gpu::uuid_string(d.uuid)},
           {"name", d.name},
           {"total_bytes", d.total_bytes},
           {"compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
           {"vmm", d.vmm}});
    }
    j["driver_version"] = p.driver_version;
    j["devices"] = devices;
  }
  std::vector<TierUsage> usage;
  {
    MutexLock lock(mu_);
    for (const auto& t : gpu_.tiers) usage.push_back(t->usage());
  }
  auto pools = nlohmann::json::array();
  for (size_t i = 0; i < usage.size(); ++i) {
    const GpuTier& t = *gpu_.tiers[i];
    nlohmann::json p = {{"device", t.device()},
                        {"pool_id", t.arena_id()},
                        {"domain", std::string(domain_label(t.domain()))},
                        {"handle", gpu::handle_type_name(t.pool().handle_type())},
                        {"policy", "s3fifo"}};
    JsonCounterVisitor v(p);
    visit_tier_counters(usage[i], {}, v);
    pools.push_back(std::move(p));
  }
  j["pools"] = std::move(pools);
  return j;
}

// Each part into its own object, through the same visit_counters() that GET /metrics renders
// (engine/engine_counters.cpp); strings and ids that are not counters are added here.
nlohmann::json Engine::stats_json() const {
  nlohmann::json j;
  j["tiers"]["gpu"] = gpu_json();
  const CounterSnapshot s = counter_snapshot();
  nlohmann::json& host = j["tiers"]["host"];
  JsonCounterVisitor host_out(host);
  visit_tier_counters(s.hosts[0], {}, host_out);
  host["policy"] = "s3fifo";
  // Each isolation domain's arena, the default one first (ids and names are constant).
  auto arenas = nlohmann::json::array();
  for (uint32_t d = 0; d < s.hosts.size(); ++d) {
    nlohmann::json a = {{"domain", std::string(domain_label(d))},
                        {"arena_id", hosts_[d]->arena_id()},
                        {"shm", "/dev/shm/" + hosts_[d]->arena().name()}};
    JsonCounterVisitor out(a);
    visit_tier_counters(s.hosts[d], {}, out);
    if (d < lookup_index_.size()) visit_lookup_index_counters(d, out);
    arenas.push_back(std::move(a));
  }
  j["arenas"] = std::move(arenas);
  if (disk_) {
    nlohmann::json& disk = j["tiers"]["disk"];
    JsonCounterVisitor out(disk);
    disk_->visit_counters(out);
    disk["backend"] = disk_->backend();
  }
  if (remote_) j["tiers"]["remote"] = remote_->stats_json();
  if (index_) j["index"] = index_->stats();
  JsonCounterVisitor top(j);
  visit_session_counters(s, top);
  JsonCounterVisitor counters(j["counters"]);
  metrics_.visit_counters(counters);
  JsonCounterVisitor latency(j["latency"]);
  metrics_.visit_latency(latency);
  JsonCounterVisitor codec(j["codec"]);
  codec_.visit_counters(codec);
  JsonCounterVisitor nf4(j["nf4_error"], {"namespace"});
  nf4_errors_.visit_counters(nf4);
  if (const BlockEventSink* events = events_.load(std::memory_order_acquire)) {
    JsonCounterVisitor out(j["events"]);
    events->visit_counters(out);
  }
  return j;
}

nlohmann::json Engine::clients_json() const {
  auto arr = nlohmann::json::array();
  MutexLock lock(mu_);
  for (const auto& [id, s] : sessions_) {
    arr.push_back({{"session", id},
                   {"pid", s.peer.pid},
                   {"uid", s.peer.uid},
                   {"gid", s.peer.gid},
                   {"comm", s.peer.comm},
                   {"connected_unix_ms", s.connected_unix_ms},
                   {"transport", s.channel ? "channel" : "socket"},
                   {"leases", s.leases.size()},
                   {"leased_bytes", s.leased_bytes},
                   {"pending_puts", s.puts.size()}});
  }
  return arr;
}

nlohmann::json Engine::list_json(const std::string& ns_filter, uint32_t limit, bool fusion_only,
                                 bool pinned_only) const {
  auto arr = nlohmann::json::array();
  MutexLock lock(mu_);
  std::optional<uint32_t> only;
  if (!ns_filter.empty()) {
    only = find_namespace(ns_filter);
    if (!only) return arr;
  }
  auto visit_block = [&](const BlockInfo& b, const std::string& tier) {
    mu_.assert_held();  // the tiers' visit() below runs it
    if (only && b.id.ns != *only) return;
    if (limit && arr.size() >= limit) return;
    if (fusion_only && !b.layout().has_fusion()) return;
    auto pin = pins_.find(b.id);
    const bool pinned = pin != pins_.end() && pin->second.block == &b;
    if (pinned_only && !pinned) return;
    auto tensors = nlohmann::json::array();
    for (const auto& t : b.layout().tensors()) {
      tensors.push_back({{"name", t.name},
                         {"dtype", dtype_name(t.dtype)},
                         {"shape", t.shape},
                         {"codec", codec_name(t.codec)},
                         {"bytes", t.bytes}});
    }
    arr.push_back({{"namespace", ns_names_.at(b.id.ns)},
                   {"key", b.id.key.hex()},
                   {"tier", tier},
                   {"bytes", b.extent.bytes},
                   {"leases", b.leases},
                   {"hits", b.hits},
                   {"created_unix_ms", b.created_unix_ms},
                   {"last_access_unix_ms", b.last_access_unix_ms},
                   {"pinned", pinned},
                   {"tensors", tensors}});
    if (pinned) arr.back()["pin_expires_unix_ms"] = pin->second.expires_unix_ms;
  };
  for (const auto& t : gpu_.tiers) {
    const std::string name = "gpu" + std::to_string(t->device());
    t->visit([&](const BlockInfo& b) { visit_block(b, name); });
  }
  for (const auto& h : hosts_) h->visit([&](const BlockInfo& b) { visit_block(b, "host"); });
  if (disk_ && !pinned_only) {  // pins hold memory tiers only
    disk_->visit([&](const DiskEntry& e) {
      if (!ns_filter.empty() && e.ns != ns_filter) return;
      if (limit && arr.size() >= limit) return;
      if (fusion_only && !LayoutView(e.layout).has_fusion()) return;
      auto tensors = nlohmann::json::array();
      for (const auto& t : e.layout.tensors) {
        tensors.push_back({{"name", t.name},
                           {"dtype", dtype_name(t.dtype)},
                           {"shape", t.shape},
                           {"codec", codec_name(t.codec)},
                           {"bytes", t.bytes}});
      }
      arr.push_back({{"namespace", e.ns},
                     {"key", e.key.hex()},
                     {"tier", "disk"},
                     {"bytes", e.disk_bytes},
                     {"leases", 0},
                     {"hits", 0},
                     {"last_access_unix_ms", e.last_access_unix_ms},
                     {"pinned", false},
                     {"tensors", tensors}});
    });
  }
  return arr;
}

}  // namespace kvtier
