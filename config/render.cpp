// Config -> TOML (`kvtierctl config`).  The output lists every key, so parse(to_toml()) gives
// back the same Config whatever the environment's defaults are.

#include <charconv>
#include <cstdio>
#include <sstream>

#include "config/config.h"
#include "config/config_internal.h"

namespace kvtier::config {

using namespace internal;

namespace {

// A TOML basic string: quotes, backslashes and control characters escaped.
std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + '"';
}

// Shortest text that reads back as the same double, always with a '.' or exponent so that
// TOML reads a float.
std::string float_text(double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, ec == std::errc() ? end : buf);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // 'n': nan/inf
  return s;
}

std::string string_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i != 0) out += ", ";
    out += quote(items[i]);
  }
  return out + "]";
}

std::string id_list(const std::vector<uint32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

const char* boolean(bool b) {
  return b ? "true" : "false";
}

}  // namespace

std::string Config::to_toml() const {
  std::ostringstream o;
  o << "# kvtierd effective configuration\n";
  if (namespaces.empty()) o << "namespace = []  # no rules: every namespace is refused\n";
  o << "\n[daemon]\n"
    << "socket = " << quote(daemon.socket.native()) << "\n"
    << "state_dir = " << quote(daemon.state_dir.native()) << "\n"
    << "shm_prefix = " << quote(daemon.shm_prefix) << "\n"
    << "io_threads = " << daemon.io_threads << "\n"
    << "max_message_bytes = " << toml_size(daemon.max_message_bytes) << "\n"
    << "busy_poll_us = " << daemon.busy_poll_us << "\n"
    << "request_channel = " << (daemon.request_channel ? "true" : "false") << "\n"
    << "lookup_index = " << (daemon.lookup_index ? "true" : "false") << "\n"
    << "lookup_index_slots = " << daemon.lookup_index_slots << "\n"
    << "lookup_index_max_slots = " << daemon.lookup_index_max_slots << "\n"
    << "max_connections = " << daemon.max_connections << "\n"
    << "drain_timeout_ms = " << daemon.drain_timeout_ms << "\n"
    << "log_level = " << quote(daemon.log_level) << "\n";
  o << "\n[access]\n"
    << "socket_mode = " << quote(access.socket_mode) << "\n"
    << "socket_group = " << quote(access.socket_group) << "\n"
    << "admin_uids = " << id_list(access.admin_uids) << "\n"
    << "admin_gids = " << id_list(access.admin_gids) << "\n";
  o << "\n[host]\n"
    << "size = " << toml_size(host.size_bytes) << "\n"
    << "prefault = " << boolean(host.prefault) << "\n"
    << "small_queue_ratio = " << float_text(host.small_queue_ratio) << "\n"
    << "ghost_entries = " << host.ghost_entries << "\n";
  o << "\n[disk]\n"
    << "enabled = " << boolean(disk.enabled) << "\n"
    << "dir = " << quote(disk.dir.native()) << "\n"
    << "size = " << toml_size(disk.size_bytes) << "\n"
    << "region_bytes = " << toml_size(disk.region_bytes) << "\n"
    << "write_queue_bytes = " << toml_size(disk.write_queue_bytes) << "\n"
    << "io_backend = " << quote(to_string(disk.io_backend)) << "\n"
    << "o_direct = " << boolean(disk.o_direct) << "\n"
    << "threads = " << disk.threads << "\n"
    << "reader_check_s = " << disk.reader_check_s << "\n";
  std::string devices = "[";
  for (size_t i = 0; i < gpu.devices.size(); ++i)
    devices += (i ? ", " : "") + std::to_string(gpu.devices[i]);
  devices += "]";
  o << "\n[gpu]\n"
    << "backend = " << quote(to_string(gpu.backend)) << "\n"
    << "devices = " << devices << "\n"
    << "size = " << toml_size(gpu.size_bytes) << "\n"
    << "handle = " << quote(to_string(gpu.handle)) << "\n"
    << "small_queue_ratio = " << float_text(gpu.small_queue_ratio) << "\n";
  o << "\n[index]\n"
    << "enabled = " << boolean(index.enabled) << "\n"
    << "exact_max_vectors = " << index.exact_max_vectors << "\n"
    << "nprobe = " << index.nprobe << "\n"
    << "save_interval_s = " << index.save_interval_s << "\n";
  o << "\n[session]\n"
    << "staging_bytes = " << toml_size(session.staging_bytes) << "\n"
    << "device_staging_bytes = " << toml_size(session.device_staging_bytes) << "\n"
    << "max_leases = " << session.max_leases << "\n"
    << "max_pending_puts = " << session.max_pending_puts << "\n";
  o << "\n[metrics]\n"
    << "listen = " << quote(metrics.listen) << "\n"
    << "nf4_error_sample = " << float_text(metrics.nf4_error_sample) << "\n";
  o << "\n[remote]\n"
    << "seeds = " << string_list(remote.seeds) << "\n"
    << (remote.password.empty() ? "" : "# password = (set; not shown)\n")
    << "connect_timeout_ms = " << remote.connect_timeout_ms << "\n"
    << "command_timeout_ms = " << remote.command_timeout_ms << "\n"
    << "threads = " << remote.threads << "\n"
    << "connections_per_node = " << remote.connections_per_node << "\n"
    << "max_value_bytes = " << toml_size(remote.max_value_bytes) << "\n"
    << "queue_bytes = " << toml_size(remote.queue_bytes) << "\n"
    << "lookup_timeout_ms = " << remote.lookup_timeout_ms << "\n"
    << "key_prefix = " << quote(remote.key_prefix) << "\n";
  o << "\n[events]\n"
    << "endpoint = " << quote(events.endpoint) << "\n"
    << "replay_endpoint = " << quote(events.replay_endpoint) << "\n"
    << "buffer_batches = " << events.buffer_batches << "\n"
    << "max_batch_events = " << events.max_batch_events << "\n"
    << "batch_ms = " << events.batch_ms << "\n";
  for (const NamespaceRule& rule : namespaces) {
    o << "\n[[namespace]]\n"
      << "prefix = " << quote(rule.prefix) << "\n"
      << "allow_uids = " << id_list(rule.allow_uids) << "\n"
      << "allow_gids = " << id_list(rule.allow_gids) << "\n"
      << "codec = " << quote(codec_toml_name(rule.codec)) << "\n"
      << "fusion_codec = " << quote(codec_toml_name(rule.fusion_codec)) << "\n";
    // The NF4 options only where something is stored as NF4: parse refuses them elsewhere.
    if (rule.codec == Codec::kNf4 || rule.fusion_codec == Codec::kNf4) {
      o << "nf4_double_quant = " << boolean(rule.nf4_double_quant) << "\n"
        << "nf4_outlier_channels = " << rule.nf4_outlier_channels << "\n";
    }
    o << "disk = "
      << quote(rule.disk == DiskPolicy::kOff       ? "off"
               : rule.disk == DiskPolicy::kPersist ? "persist"
                                                   : "writeback")
      << "\n"
      << "compress = " << boolean(rule.compress) << "\n"
      << "remote = "
      << quote(rule.remote == RemotePolicy::kOff         ? "off"
               : rule.remote == RemotePolicy::kWriteBack ? "writeback"
                                                         : "writethrough")
      << "\n"
      << "remote_ttl_s = " << rule.remote_ttl_s << "\n"
      << "pin_bytes = "
      << (rule.pin_bytes == NamespaceRule::kPinBytesAuto ? quote("auto")
                                                         : toml_size(rule.pin_bytes))
      << "\n"
      << "arena = " << quote(rule.arena) << "\n";
  }
  for (const ArenaConfig& a : arenas) {
    o << "\n[[arena]]\n"
      << "name = " << quote(a.name) << "\n"
      << "size = " << toml_size(a.size_bytes) << "\n"
      << "gpu_size = " << toml_size(a.gpu_size_bytes) << "\n";
  }
  return o.str();
}

}  // namespace kvtier::config
