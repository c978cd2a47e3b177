// Defaults, validation and namespace rules.  TOML parsing is in parse.cpp, rendering in
// render.cpp.
//
// Validation messages start with the dotted key they concern ("daemon.io_threads: ..."):
// parse() looks that key up to append the line it was set on.

#include "config/config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "config/config_internal.h"

namespace kvtier::config {

using namespace internal;

namespace {

[[noreturn]] void fail(const std::string& msg) {
  throw ConfigError(msg);
}

// $VAR (its first entry: systemd joins several RuntimeDirectory= paths with ':') + suffix,
// or `fallback` when VAR is unset or empty.
std::filesystem::path env_dir(const char* var, const char* suffix, const char* fallback) {
  const char* value = std::getenv(var);
  if (value == nullptr || *value == '\0') return fallback;
  std::string_view first(value);
  first = first.substr(0, first.find(':'));
  std::filesystem::path dir(first);
  return *suffix != '\0' ? dir / suffix : dir;
}

bool valid_shm_prefix(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

bool valid_arena_name(std::string_view s) {
  return s.size() <= 32 && valid_shm_prefix(s);
}

void check_ids(const std::vector<uint32_t>& ids, const char* key) {
  for (uint32_t id : ids) {
    if (id == static_cast<uint32_t>(-1)) {
      fail(std::string(key) + ": 4294967295 is not a valid id");
    }
  }
}

}  // namespace

namespace internal {

std::string human_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    ++unit;
  }
  char buf[48];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else if (std::fabs(value - std::round(value)) < 0.05) {
    std::snprintf(buf, sizeof buf, "%.0f %s", std::round(value), kUnits[unit]);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", value, kUnits[unit]);
  }
  return buf;
}

std::string toml_size(uint64_t bytes) {
  static constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
  for (auto [unit, name] : kUnits) {
    if (bytes != 0 && bytes % unit == 0) return '"' + std::to_string(bytes / unit) + name + '"';
  }
  // A TOML integer holds at most 2^63 - 1; a size string ("bytes") holds any u64 (found by
  // fuzz/fuzz_config.cpp: a rendering that did not parse back).
  if (bytes > static_cast<uint64_t>(INT64_MAX)) return '"' + std::to_string(bytes) + '"';
  return std::to_string(bytes);
}

const char* codec_toml_name(Codec c) {
  switch (c) {
    case Codec::kRaw:
      return "fp16";
    case Codec::kNf4:
      return "nf4";
  }
  return "?";
}

std::optional<Codec> codec_from_toml(std::string_view name) {
  if (name == "fp16") return Codec::kRaw;
  if (name == "nf4") return Codec::kNf4;
  return std::nullopt;
}

std::optional<uint32_t> parse_mode(std::string_view text) {
  if (text.starts_with("0o")) text.remove_prefix(2);
  if (text.empty() || text.size() > 4) return std::nullopt;
  uint32_t mode = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
  if (ec != std::errc() || end != text.data() + text.size() || mode > 0777) return std::nullopt;
  return mode;
}

}  // namespace internal

std::optional<uint64_t> parse_size(std::string_view text) {
  auto is_space = [](char c) { return c == ' ' || c == '\t'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  uint64_t number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec != std::errc() || end == text.data()) return std::nullopt;  // no digits, or overflow
  std::string_view unit(end, text.data() + text.size() - end);
  while (!unit.empty() && is_space(unit.front())) unit.remove_prefix(1);
  static const std::map<std::string_view, uint64_t> kUnits = {{"", 1},
                                                              {"B", 1},
                                                              {"KiB", kKiB},
                                                              {"MiB", kMiB},
                                                              {"GiB", kGiB},
                                                              {"TiB", kTiB},
                                                              {"KB", 1000ull},
                                                              {"MB", 1000ull * 1000},
                                                              {"GB", 1000000000ull},
                                                              {"TB", 1000000000000ull}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end()) return std::nullopt;
  if (number > UINT64_MAX / it->second) return std::nullopt;
  return number * it->second;
}

void DaemonConfig::validate() const {
  if (socket.empty()) fail("daemon.socket: must not be empty");
  if (socket.native().size() >= sizeof(sockaddr_un::sun_path)) {
    fail("daemon.socket: '" + socket.native() + "' is " + std::to_string(socket.native().size()) +
         " bytes; a Unix socket path must be shorter than " +
         std::to_string(sizeof(sockaddr_un::sun_path)));
  }
  if (state_dir.empty()) fail("daemon.state_dir: must not be empty");
  if (!valid_shm_prefix(shm_prefix)) {
    fail("daemon.shm_prefix: '" + shm_prefix + "' must be 1..64 characters of [A-Za-z0-9_.-]");
  }
  if (io_threads < 1 || io_threads > 64) {
    fail("daemon.io_threads: must be in 1..64, got " + std::to_string(io_threads));
  }
  if (busy_poll_us > 100000) {
    fail("daemon.busy_poll_us: must be in 0..100000, got " + std::to_string(busy_poll_us));
  }
  if (max_message_bytes < 4 * kKiB || max_message_bytes > kGiB) {
    fail("daemon.max_message_bytes: must be in 4KiB..1GiB, got " + human_size(max_message_bytes));
  }
  if (max_connections < 1) fail("daemon.max_connections: must be at least 1");
  auto pow2 = [](uint64_t v) { return v >= 64 && (v & (v - 1)) == 0 && v <= (1ull << 30); };
  if (!pow2(lookup_index_slots)) {
    fail("daemon.lookup_index_slots: must be a power of two in 64..2^30, got " +
         std::to_string(lookup_index_slots));
  }
  if (!pow2(lookup_index_max_slots) || lookup_index_max_slots < lookup_index_slots) {
    fail("daemon.lookup_index_max_slots: must be a power of two in lookup_index_slots..2^30, got " +
         std::to_string(lookup_index_max_slots));
  }
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn", "error"};
  if (std::find(std::begin(kLevels), std::end(kLevels), log_level) == std::end(kLevels)) {
    fail("daemon.log_level: '" + log_level + "' is not one of trace, debug, info, warn, error");
  }
}

void AccessConfig::validate() const {
  if (!parse_mode(socket_mode)) {
    fail("access.socket_mode: '" + socket_mode +
         "' is not an octal permission mode <= 0777 (e.g. \"0660\")");
  }
  if (socket_group.find_first_of(": \t\n") != std::string::npos) {
    fail("access.socket_group: '" + socket_group + "' is not a group name");
  }
  if (!socket_group.empty()) {
    // Checked here, not when the socket is bound: --check-config must catch it too.
    std::vector<char> buf(16384);
    group g{};
    group* found = nullptr;
    int err = ::getgrnam_r(socket_group.c_str(), &g, buf.data(), buf.size(), &found);
    if (err == ERANGE) {
      buf.resize(1 << 20);
      err = ::getgrnam_r(socket_group.c_str(), &g, buf.data(), buf.size(), &found);
    }
    if (found == nullptr)
      fail("access.socket_group: no group '" + socket_group + "' on this host" +
           (err != 0 ? std::string(" (") + std::strerror(err) + ")" : std::string()));
  }
  check_ids(admin_uids, "access.admin_uids");
  check_ids(admin_gids, "access.admin_gids");
}

void HostTierConfig::validate(const std::filesystem::path& shm_dir, uint64_t arena_bytes) const {
  if (size_bytes < 16 * kMiB) {
    fail("host.size: must be at least 16MiB, got " + human_size(size_bytes));
  }
  if (!(small_queue_ratio > 0.0 && small_queue_ratio <= 0.5)) {
    fail("host.small_queue_ratio: must be in (0, 0.5], got " + std::to_string(small_queue_ratio));
  }
  struct statvfs vfs {};
  if (::statvfs(shm_dir.c_str(), &vfs) != 0) {
    fail("host.size: cannot check the free space of " + shm_dir.native() + ": " +
         std::strerror(errno));
  }
  // Free space for unprivileged users (f_bavail): what other processes' segments leave us.
  const uint64_t total = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  const uint64_t free = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (size_bytes > free) {
    fail("host.size " + human_size(size_bytes) + " does not fit " + shm_dir.native() + " (" +
         human_size(total) + " total, " + human_size(free) + " free); lower host.size or grow " +
         shm_dir.native());
  }
  if (size_bytes + arena_bytes > free) {
    fail("host.size " + human_size(size_bytes) + " plus the [[arena]] sizes (" +
         human_size(arena_bytes) + ") does not fit " + shm_dir.native() + " (" + human_size(free) +
         " free); lower them or grow " + shm_dir.native());
  }
}

void ArenaConfig::validate() const {
  if (!valid_arena_name(name))
    fail("arena.name: '" + name + "' must be 1..32 characters of [A-Za-z0-9_.-]");
  if (size_bytes < 16 * kMiB)
    fail("arena.size: arena '" + name + "' must be at least 16MiB, got " + human_size(size_bytes));
  if (gpu_size_bytes != 0 && gpu_size_bytes < kMiB)
    fail("arena.gpu_size: arena '" + name + "' must be 0 (no GPU pool) or at least 1MiB, got " +
         human_size(gpu_size_bytes));
}

void DiskTierConfig::validate() const {
  if (!enabled) return;
  if (region_bytes < kMiB || region_bytes > (4096ull << 20) || region_bytes % 4096 != 0) {
    fail("disk.region_bytes: must be a multiple of 4KiB in 1MiB..4GiB, got " +
         human_size(region_bytes));
  }
  if (size_bytes < 2 * region_bytes) {
    fail("disk.size: must hold at least two regions (2 x " + human_size(region_bytes) + "), got " +
         human_size(size_bytes));
  }
  if (write_queue_bytes < kMiB) {
    fail("disk.write_queue_bytes: must be at least 1MiB, got " + human_size(write_queue_bytes));
  }
  if (threads < 1 || threads > 64)
    fail("disk.threads: must be in 1..64, got " + std::to_string(threads));
  if (reader_check_s < 1) fail("disk.reader_check_s: must be at least 1");
}

void GpuTierConfig::validate() const {
  if (size_bytes < kMiB) fail("gpu.size: must be at least 1MiB, got " + human_size(size_bytes));
  if (!(small_queue_ratio > 0 && small_queue_ratio <= 0.5)) {
    fail("gpu.small_queue_ratio: must be in (0, 0.5], got " + std::to_string(small_queue_ratio));
  }
  std::vector<uint32_t> sorted = devices;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    fail("gpu.devices: a device is listed twice");
  for (uint32_t d : devices)
    if (d > 63) fail("gpu.devices: device index " + std::to_string(d) + " is out of range 0..63");
}

void IndexConfig::validate() const {
  if (exact_max_vectors < 1000)
    fail("index.exact_max_vectors: must be at least 1000, got " +
         std::to_string(exact_max_vectors));
  if (save_interval_s < 1) fail("index.save_interval_s: must be at least 1");
}

void SessionConfig::validate() const {
  if (staging_bytes < kMiB) {
    fail("session.staging_bytes: must be at least 1MiB, got " + human_size(staging_bytes));
  }
  if (device_staging_bytes < kMiB) {
    fail("session.device_staging_bytes: must be at least 1MiB, got " +
         human_size(device_staging_bytes));
  }
  if (max_leases < 1) fail("session.max_leases: must be at least 1");
  if (max_pending_puts < 1) fail("session.max_pending_puts: must be at least 1");
}

std::optional<ListenAddress> parse_listen(std::string_view text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  const bool v6 = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (v6) host = host.substr(1, host.size() - 2);
  ListenAddress out;
  out.address = std::string(host);
  unsigned char buf[sizeof(in6_addr)];
  if (::inet_pton(v6 ? AF_INET6 : AF_INET, out.address.c_str(), buf) != 1) return std::nullopt;
  uint32_t p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p < 1 || p > 65535)
    return std::nullopt;
  out.port = static_cast<uint16_t>(p);
  return out;
}

void MetricsConfig::validate() const {
  if (!listen.empty() && !parse_listen(listen))
    fail("metrics.listen: '" + listen +
         "' is not \"address:port\" with an IP address and a port in 1..65535 (e.g. "
         "\"127.0.0.1:9464\", \"[::1]:9464\"; \"\" = off)");
  if (!(nf4_error_sample >= 0.0 && nf4_error_sample <= 1.0))
    fail("metrics.nf4_error_sample: must be in [0, 1], got " + std::to_string(nf4_error_sample));
}

void RemoteTierConfig::validate() const {
  for (const std::string& seed : seeds) {
    const size_t colon = seed.rfind(':');
    uint32_t port = 0;
    const bool numeric =
        colon != std::string::npos && colon > 0 && colon + 1 < seed.size() &&
        std::from_chars(seed.data() + colon + 1, seed.data() + seed.size(), port).ptr ==
            seed.data() + seed.size();
    if (!numeric || port < 1 || port > 65535)
      fail("remote.seeds: '" + seed + "' is not \"host:port\" with a port in 1..65535");
  }
  if (connect_timeout_ms < 1 || connect_timeout_ms > 60000)
    fail("remote.connect_timeout_ms: must be in 1..60000, got " +
         std::to_string(connect_timeout_ms));
  if (command_timeout_ms < 1 || command_timeout_ms > 60000)
    fail("remote.command_timeout_ms: must be in 1..60000, got " +
         std::to_string(command_timeout_ms));
  if (lookup_timeout_ms < 1 || lookup_timeout_ms > 60000)
    fail("remote.lookup_timeout_ms: must be in 1..60000, got " + std::to_string(lookup_timeout_ms));
  if (threads < 1 || threads > 64)
    fail("remote.threads: must be in 1..64, got " + std::to_string(threads));
  if (connections_per_node < 1 || connections_per_node > 256)
    fail("remote.connections_per_node: must be in 1..256, got " +
         std::to_string(connections_per_node));
  // Redis refuses bulk strings over proto-max-bulk-len (512 MB by default).
  if (max_value_bytes < (64ull << 10) || max_value_bytes > (512ull << 20))
    fail("remote.max_value_bytes: must be in 64KiB..512MiB, got " + human_size(max_value_bytes));
  if (queue_bytes < (1ull << 20))
    fail("remote.queue_bytes: must be at least 1MiB, got " + human_size(queue_bytes));
  if (key_prefix.empty() || key_prefix.size() > 64 ||
      key_prefix.find_first_of("{}") != std::string::npos)
    fail("remote.key_prefix: must be 1..64 characters without '{' or '}', got '" + key_prefix +
         "'");
}

void EventsConfig::validate() const {
  auto endpoint_ok = [](const std::string& e) {
    return e.empty() || e.starts_with("tcp://") || e.starts_with("ipc://") ||
           e.starts_with("inproc://");
  };
  if (!endpoint_ok(endpoint))
    fail("events.endpoint: '" + endpoint +
         "' is not a ZeroMQ endpoint (tcp://host:port, ipc://path; \"\" = off)");
  if (!endpoint_ok(replay_endpoint))
    fail("events.replay_endpoint: '" + replay_endpoint + "' is not a ZeroMQ endpoint");
  if (!replay_endpoint.empty() && endpoint.empty())
    fail("events.replay_endpoint: needs events.endpoint");
  if (buffer_batches < 1) fail("events.buffer_batches: must be at least 1");
  if (max_batch_events < 1 || max_batch_events > 65536)
    fail("events.max_batch_events: must be in 1..65536, got " + std::to_string(max_batch_events));
  if (batch_ms > 10000)
    fail("events.batch_ms: must be in 0..10000, got " + std::to_string(batch_ms));
}

void NamespaceRule::validate() const {
  check_ids(allow_uids, "namespace.allow_uids");
  check_ids(allow_gids, "namespace.allow_gids");
  if (nf4_outlier_channels > kMaxNf4OutlierChannels) {
    fail("namespace.nf4_outlier_channels: must be in 0.." + std::to_string(kMaxNf4OutlierChannels) +
         ", got " + std::to_string(nf4_outlier_channels));
  }
}

bool NamespaceRule::allows(uid_t uid, gid_t gid, const std::vector<gid_t>& groups) const {
  if (allow_uids.empty() && allow_gids.empty()) return true;
  auto listed = [](const auto& list, auto id) {
    return std::find(list.begin(), list.end(), id) != list.end();
  };
  if (listed(allow_uids, uid) || listed(allow_gids, gid)) return true;
  return std::any_of(groups.begin(), groups.end(), [&](gid_t g) { return listed(allow_gids, g); });
}

void Config::validate() const {
  daemon.validate();
  access.validate();
  disk.validate();
  gpu.validate();
  index.validate();
  session.validate();
  metrics.validate();
  remote.validate();
  events.validate();
  std::map<std::string_view, size_t> seen;  // prefix -> index of its first rule
  for (size_t i = 0; i < namespaces.size(); ++i) {
    const std::string index = "namespace[" + std::to_string(i) + "]";
    try {
      namespaces[i].validate();
    } catch (const ConfigError& e) {
      // "namespace.codec: ..." -> "namespace[2].codec: ..."
      fail(index + std::string(e.what()).substr(std::strlen("namespace")));
    }
    auto [it, inserted] = seen.emplace(namespaces[i].prefix, i);
    if (!inserted) {
      fail(index + ".prefix: duplicate prefix '" + namespaces[i].prefix + "' (also namespace[" +
           std::to_string(it->second) + "])");
    }
    if (namespaces[i].remote != RemotePolicy::kOff && !remote.enabled())
      fail(index + ".remote: needs a remote tier ([remote] seeds) or remote = \"off\"");
  }
  if (session.staging_bytes > host.size_bytes) {
    fail("session.staging_bytes: " + human_size(session.staging_bytes) +
         " is larger than host.size (" + human_size(host.size_bytes) + ")");
  }
  uint64_t arena_bytes = 0;
  for (size_t i = 0; i < arenas.size(); ++i) {
    const std::string index = "arena[" + std::to_string(i) + "]";
    try {
      arenas[i].validate();
    } catch (const ConfigError& e) {
      fail(index + std::string(e.what()).substr(std::strlen("arena")));
    }
    for (size_t j = 0; j < i; ++j)
      if (arenas[j].name == arenas[i].name)
        fail(index + ".name: duplicate arena '" + arenas[i].name + "' (also arena[" +
             std::to_string(j) + "])");
    arena_bytes += arenas[i].size_bytes;
  }
  for (size_t i = 0; i < namespaces.size(); ++i) {
    if (domain_of(namespaces[i].arena) < 0)
      fail("namespace[" + std::to_string(i) + "].arena: no [[arena]] named '" +
           namespaces[i].arena + "'");
    // Pins may not hold more than the arena they pin in (the quota keeps them from starving
    // the cache; "auto" is a quarter of it).
    const uint64_t pin = namespaces[i].pin_bytes;
    const uint64_t arena = arena_bytes_of(namespaces[i]);
    if (pin != NamespaceRule::kPinBytesAuto && pin > arena) {
      fail("namespace[" + std::to_string(i) + "].pin_bytes: " + human_size(pin) +
           " is larger than its arena (" +
           (namespaces[i].arena.empty() ? std::string("host.size")
                                        : "arena '" + namespaces[i].arena + "'") +
           " = " + human_size(arena) + ")");
    }
  }
  // Last: the host tier check reads /dev/shm, the others need nothing but the values.
  host.validate("/dev/shm", arena_bytes);
}

int Config::domain_of(std::string_view arena) const {
  if (arena.empty()) return 0;
  for (size_t i = 0; i < arenas.size(); ++i)
    if (arenas[i].name == arena) return static_cast<int>(i + 1);
  return -1;
}

uint64_t Config::arena_bytes_of(const NamespaceRule& rule) const {
  const int d = domain_of(rule.arena);
  if (d <= 0) return host.size_bytes;
  return arenas[static_cast<size_t>(d) - 1].size_bytes;
}

uint64_t Config::pin_quota(const NamespaceRule& rule) const {
  if (rule.pin_bytes != NamespaceRule::kPinBytesAuto) return rule.pin_bytes;
  return arena_bytes_of(rule) / 4;
}

std::filesystem::path Config::disk_dir() const {
  return disk.dir.empty() ? daemon.state_dir / "disk" : disk.dir;
}

const NamespaceRule* Config::rule_for(std::string_view ns) const {
  const NamespaceRule* best = nullptr;
  for (const NamespaceRule& rule : namespaces) {
    if (ns.starts_with(rule.prefix) &&
        (best == nullptr || rule.prefix.size() > best->prefix.size())) {
      best = &rule;
    }
  }
  return best;
}

Config defaults() {
  Config cfg;
  cfg.daemon.socket = env_dir("RUNTIME_DIRECTORY", "kvtier.sock", "./var/kvtier.sock");
  cfg.daemon.state_dir = env_dir("STATE_DIRECTORY", "", "./var/lib");
  cfg.access.admin_uids = {0};
  if (geteuid() != 0) cfg.access.admin_uids.push_back(geteuid());
  cfg.namespaces.push_back(NamespaceRule{});
  return cfg;
}

}  // namespace kvtier::config
