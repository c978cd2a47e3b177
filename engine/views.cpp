// JSON views of the cache for stats, `kvtierctl clients` and `kvtierctl ls`.
#include "engine/engine.h"

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
           {"name", d.name},
           {"total_bytes", d.total_bytes},
           {"compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
           {"vmm", d.vmm}});
    }
    j["driver_version"] = p.driver_version;
    j["devices"] = devices;
  }
  auto pools = nlohmann::json::array();
  MutexLock lock(mu_);
  for (const auto& t : gpu_.tiers) {
    const TierUsage u = t->usage();
    pools.push_back(
        {{"device", t->device()},
         {"pool_id", t->arena_id()},
         {"domain", t->domain() == 0 ? std::string() : config_.arenas[t->domain() - 1].name},
         {"handle", gpu::handle_type_name(t->pool().handle_type())},
         {"capacity_bytes", u.capacity_bytes},
         {"used_bytes", u.used_bytes},
         {"reserved_bytes", u.reserved_bytes},
         {"fusion_bytes", u.fusion_bytes},
         {"blocks", u.blocks},
         {"leased_blocks", u.leased_blocks},
         {"evictions", u.evictions},
         {"evicted_bytes", u.evicted_bytes},
         {"policy", "s3fifo"}});
  }
  j["pools"] = pools;
  return j;
}

nlohmann::json Engine::stats_json() const {
  nlohmann::json j;
  TierUsage u;
  uint64_t sessions, leases = 0, pending = 0;
  j["tiers"]["gpu"] = gpu_json();
  {
    MutexLock lock(mu_);
    u = hosts_[0]->usage();
    // Each isolation domain's arena, the default one first.
    auto arenas = nlohmann::json::array();
    for (size_t d = 0; d < hosts_.size(); ++d) {
      const TierUsage a = hosts_[d]->usage();
      arenas.push_back({{"domain", d == 0 ? std::string() : config_.arenas[d - 1].name},
                        {"arena_id", hosts_[d]->arena_id()},
                        {"shm", "/dev/shm/" + hosts_[d]->arena().name()},
                        {"capacity_bytes", a.capacity_bytes},
                        {"used_bytes", a.used_bytes},
                        {"blocks", a.blocks},
                        {"leased_blocks", a.leased_blocks},
                        {"evictions", a.evictions}});
    }
    j["arenas"] = std::move(arenas);
    sessions = sessions_.size();
    for (const auto& [id, s] : sessions_) {
      leases += s.leases.size();
      pending += s.puts.size();
    }
  }
  j["tiers"]["host"] = {
      {"capacity_bytes", u.capacity_bytes},
      {"used_bytes", u.used_bytes},
      {"reserved_bytes", u.reserved_bytes},
      {"raw_bytes", u.raw_bytes},
      {"fusion_bytes", u.fusion_bytes},
      {"compression_ratio", u.used_bytes ? double(u.raw_bytes) / double(u.used_bytes) : 1.0},
      {"blocks", u.blocks},
      {"leased_blocks", u.leased_blocks},
      {"evictions", u.evictions},
      {"evicted_bytes", u.evicted_bytes},
      {"policy", "s3fifo"},
  };
  if (disk_) {
    DiskUsage d = disk_->usage();
    j["tiers"]["disk"] = {
        {"capacity_bytes", d.capacity_bytes},
        {"used_bytes", d.used_bytes},
        {"stored_bytes", d.disk_bytes},
        {"raw_bytes", d.payload_bytes},
        {"compression_ratio", d.disk_bytes ? double(d.payload_bytes) / double(d.disk_bytes) : 1.0},
        {"blocks", d.blocks},
        {"regions", d.regions},
        {"queued_bytes", d.queued_bytes},
        {"writes", d.writes},
        {"write_bytes", d.write_bytes},
        {"reads", d.reads},
        {"read_bytes", d.read_bytes},
        {"write_errors", d.write_errors},
        {"read_errors", d.read_errors},
        {"corrupt_dropped", d.corrupt_dropped},
        {"regions_reclaimed", d.regions_reclaimed},
        {"dropped_at_open", d.dropped_at_open},
        {"backend", disk_->backend()},
    };
  }
  if (index_) j["index"] = index_->stats();
  j["sessions"] = sessions;
  j["leases"] = leases;
  j["pending_puts"] = pending;
  nlohmann::json c;
  metrics_.visit(
      [&](std::string_view name, std::string_view, uint64_t v) { c[std::string(name)] = v; });
  j["counters"] = c;
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

nlohmann::json Engine::list_json(const std::string& ns_filter, uint32_t limit,
                                 bool fusion_only) const {
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
                   {"tensors", tensors}});
  };
  for (const auto& t : gpu_.tiers) {
    const std::string name = "gpu" + std::to_string(t->device());
    t->visit([&](const BlockInfo& b) { visit_block(b, name); });
  }
  for (const auto& h : hosts_) h->visit([&](const BlockInfo& b) { visit_block(b, "host"); });
  if (disk_) {
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
                     {"tensors", tensors}});
    });
  }
  return arr;
}

}  // namespace kvtier
