// TOML -> Config.  Every section is read through a table of its keys, so a key missing from
// the table is an error ("unknown key 'host.sise' at line 12 of kvtier.toml"), and every
// value is type-checked with its dotted name and line in the message.

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "config/config.h"
#include "config/config_internal.h"

namespace kvtier::config {

using namespace internal;

namespace {

const char* type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// Reads one document into a Config.  Remembers the line of every key it read, so that a
// failed validate() ("daemon.io_threads: must be in 1..64") can be pointed at its line.
constexpr std::array<std::pair<std::string_view, DiskIoBackend>, 3> kDiskIoBackends{{
    {"auto", DiskIoBackend::kAuto},
    {"io_uring", DiskIoBackend::kIoUring},
    {"threads", DiskIoBackend::kThreads},
}};
constexpr std::array<std::pair<std::string_view, GpuBackend>, 4> kGpuBackends{{
    {"auto", GpuBackend::kAuto},
    {"cuda", GpuBackend::kCuda},
    {"emulation", GpuBackend::kEmulation},
    {"off", GpuBackend::kOff},
}};
constexpr std::array<std::pair<std::string_view, GpuHandle>, 2> kGpuHandles{{
    {"vmm", GpuHandle::kVmm},
    {"ipc", GpuHandle::kIpc},
}};

template <typename E, size_t N>
const char* name_of(const std::array<std::pair<std::string_view, E>, N>& names, E v) {
  for (const auto& [name, value] : names)
    if (value == v) return name.data();
  return "?";
}

class Reader {
 public:
  using Handler = std::function<void(const toml::node&, const std::string& key)>;
  using Keys = std::vector<std::pair<std::string_view, Handler>>;

  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& msg, const toml::source_region& where) const {
    throw ConfigError(msg + at(where.begin.line));
  }

  // " at line 12 of kvtier.toml", or " in kvtier.toml" when the line is unknown (0).
  std::string at(uint32_t line) const {
    return line != 0 ? " at line " + std::to_string(line) + " of " + origin_ : " in " + origin_;
  }

  uint32_t line_of(const std::string& key) const {
    auto it = lines_.find(key);
    return it == lines_.end() ? 0 : it->second;
  }

  // Dispatches each entry of `table` (named `section`, "" for the root) to its handler.
  void read_table(const toml::table& table, const std::string& section, const Keys& keys) {
    for (auto&& [k, node] : table) {
      const std::string name(k.str());
      const std::string key = section.empty() ? name : section + "." + name;
      auto it = std::find_if(keys.begin(), keys.end(), [&](auto& e) { return e.first == name; });
      if (it == keys.end()) {
        const bool is_section = section.empty() && (node.is_table() || node.is_array_of_tables());
        fail(std::string(is_section ? "unknown section '" : "unknown key '") + key + "'",
             k.source());
      }
      lines_[key] = node.source().begin.line;
      it->second(node, key);
    }
  }

  [[noreturn]] void wrong_type(const toml::node& node, const std::string& key,
                               std::string_view expected) const {
    fail(key + ": expected " + std::string(expected) + ", got " + type_name(node.type()),
         node.source());
  }

  const toml::table& table(const toml::node& node, const std::string& key) const {
    if (!node.is_table()) wrong_type(node, key, "a table");
    return *node.as_table();
  }

  std::string str(const toml::node& node, const std::string& key) const {
    if (!node.is_string()) wrong_type(node, key, "a string");
    return node.as_string()->get();
  }

  // A setting that names one of `names` ({name, value}); anything else fails naming the key,
  // the value and every allowed name.
  template <typename E, size_t N>
  E choice(const toml::node& node, const std::string& key,
           const std::array<std::pair<std::string_view, E>, N>& names) const {
    const std::string v = str(node, key);
    std::string allowed;
    for (const auto& [name, value] : names) {
      if (name == v) return value;
      allowed += (allowed.empty() ? "\"" : ", \"") + std::string(name) + "\"";
    }
    fail(key + ": '" + v + "' is not one of " + allowed, node.source());
  }

  bool boolean(const toml::node& node, const std::string& key) const {
    if (!node.is_boolean()) wrong_type(node, key, "a boolean");
    return node.as_boolean()->get();
  }

  double number(const toml::node& node, const std::string& key) const {
    if (node.is_integer()) return static_cast<double>(node.as_integer()->get());
    if (!node.is_floating_point()) wrong_type(node, key, "a number");
    return node.as_floating_point()->get();
  }

  template <typename T>
  T integer(const toml::node& node, const std::string& key) const {
    if (!node.is_integer()) wrong_type(node, key, "an integer");
    const int64_t v = node.as_integer()->get();
    const uint64_t max = std::min<uint64_t>(std::numeric_limits<T>::max(), INT64_MAX);
    if (v < 0 || static_cast<uint64_t>(v) > max) {
      fail(key + ": " + std::to_string(v) + " is out of range 0.." + std::to_string(max),
           node.source());
    }
    return static_cast<T>(v);
  }

  // An integer number of bytes or a string parse_size() accepts.
  uint64_t size(const toml::node& node, const std::string& key) const {
    if (node.is_integer()) return integer<uint64_t>(node, key);
    if (!node.is_string()) wrong_type(node, key, "a size (bytes, or a string like \"64MiB\")");
    const std::string& text = node.as_string()->get();
    if (auto bytes = parse_size(text)) return *bytes;
    throw ConfigError(key + ": bad size '" + text + "'" + at(node.source().begin.line) +
                      "; use a number of bytes or a string like \"64MiB\" (units B, KiB, MiB, "
                      "GiB, TiB, or KB, MB, GB, TB as powers of 1000)");
  }

  // An array of uids or gids; (uid_t)-1 is refused by validate().
  std::vector<uint32_t> ids(const toml::node& node, const std::string& key) const {
    if (!node.is_array()) wrong_type(node, key, "an array of integers");
    std::vector<uint32_t> out;
    const toml::array& array = *node.as_array();
    for (size_t i = 0; i < array.size(); ++i) {
      out.push_back(integer<uint32_t>(array[i], key + "[" + std::to_string(i) + "]"));
    }
    return out;
  }

  // An array of strings.
  std::vector<std::string> strings(const toml::node& node, const std::string& key) const {
    if (!node.is_array()) wrong_type(node, key, "an array of strings");
    std::vector<std::string> out;
    const toml::array& array = *node.as_array();
    for (size_t i = 0; i < array.size(); ++i)
      out.push_back(str(array[i], key + "[" + std::to_string(i) + "]"));
    return out;
  }

  // "0660" as a string, or a TOML octal integer (0o660); validate() checks the string.
  std::string mode(const toml::node& node, const std::string& key) const {
    if (node.is_string()) return node.as_string()->get();
    const uint32_t bits = integer<uint32_t>(node, key);
    if (bits > 0777) {
      fail(key + ": " + std::to_string(bits) + " is not a permission mode <= 0o777 (write 0o660)",
           node.source());
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "0%03o", bits);
    return buf;
  }

  Codec codec(const toml::node& node, const std::string& key) const {
    const std::string name = str(node, key);
    if (auto c = codec_from_toml(name)) return *c;
    fail(key + ": unknown codec '" + name + "' (expected \"fp16\" or \"nf4\")", node.source());
  }

 private:
  std::string origin_;
  std::map<std::string, uint32_t> lines_;  // "host.size" -> line it was set on
};

void read_daemon(Reader& r, const toml::table& t, DaemonConfig& d) {
  r.read_table(
      t, "daemon",
      {{"socket", [&](auto& n, auto& k) { d.socket = r.str(n, k); }},
       {"state_dir", [&](auto& n, auto& k) { d.state_dir = r.str(n, k); }},
       {"shm_prefix", [&](auto& n, auto& k) { d.shm_prefix = r.str(n, k); }},
       {"io_threads", [&](auto& n, auto& k) { d.io_threads = r.integer<uint32_t>(n, k); }},
       {"max_message_bytes", [&](auto& n, auto& k) { d.max_message_bytes = r.size(n, k); }},
       {"busy_poll_us", [&](auto& n, auto& k) { d.busy_poll_us = r.integer<uint32_t>(n, k); }},
       {"request_channel", [&](auto& n, auto& k) { d.request_channel = r.boolean(n, k); }},
       {"lookup_index", [&](auto& n, auto& k) { d.lookup_index = r.boolean(n, k); }},
       {"lookup_index_slots",
        [&](auto& n, auto& k) { d.lookup_index_slots = r.integer<uint64_t>(n, k); }},
       {"lookup_index_max_slots",
        [&](auto& n, auto& k) { d.lookup_index_max_slots = r.integer<uint64_t>(n, k); }},
       {"max_connections",
        [&](auto& n, auto& k) { d.max_connections = r.integer<uint32_t>(n, k); }},
       {"drain_timeout_ms",
        [&](auto& n, auto& k) { d.drain_timeout_ms = r.integer<uint32_t>(n, k); }},
       {"log_level", [&](auto& n, auto& k) { d.log_level = r.str(n, k); }}});
}

void read_access(Reader& r, const toml::table& t, AccessConfig& a) {
  // Setting either admin list replaces the built-in {0, euid} default for both.
  bool admin_set = false;
  auto admins = [&](std::vector<uint32_t>& list, const toml::node& n, const std::string& k) {
    if (!admin_set) {
      a.admin_uids.clear();
      a.admin_gids.clear();
      admin_set = true;
    }
    list = r.ids(n, k);
  };
  r.read_table(t, "access",
               {{"socket_mode", [&](auto& n, auto& k) { a.socket_mode = r.mode(n, k); }},
                {"socket_group", [&](auto& n, auto& k) { a.socket_group = r.str(n, k); }},
                {"admin_uids", [&](auto& n, auto& k) { admins(a.admin_uids, n, k); }},
                {"admin_gids", [&](auto& n, auto& k) { admins(a.admin_gids, n, k); }}});
}

void read_host(Reader& r, const toml::table& t, HostTierConfig& h) {
  r.read_table(
      t, "host",
      {{"size", [&](auto& n, auto& k) { h.size_bytes = r.size(n, k); }},
       {"prefault", [&](auto& n, auto& k) { h.prefault = r.boolean(n, k); }},
       {"small_queue_ratio", [&](auto& n, auto& k) { h.small_queue_ratio = r.number(n, k); }},
       {"ghost_entries", [&](auto& n, auto& k) { h.ghost_entries = r.integer<uint64_t>(n, k); }}});
}

void read_disk(Reader& r, const toml::table& t, DiskTierConfig& d) {
  r.read_table(
      t, "disk",
      {{"enabled", [&](auto& n, auto& k) { d.enabled = r.boolean(n, k); }},
       {"dir", [&](auto& n, auto& k) { d.dir = r.str(n, k); }},
       {"size", [&](auto& n, auto& k) { d.size_bytes = r.size(n, k); }},
       {"region_bytes", [&](auto& n, auto& k) { d.region_bytes = r.size(n, k); }},
       {"write_queue_bytes", [&](auto& n, auto& k) { d.write_queue_bytes = r.size(n, k); }},
       {"io_backend", [&](auto& n, auto& k) { d.io_backend = r.choice(n, k, kDiskIoBackends); }},
       {"o_direct", [&](auto& n, auto& k) { d.o_direct = r.boolean(n, k); }},
       {"threads", [&](auto& n, auto& k) { d.threads = r.integer<uint32_t>(n, k); }},
       {"reader_check_s",
        [&](auto& n, auto& k) { d.reader_check_s = r.integer<uint32_t>(n, k); }}});
}

void read_index(Reader& r, const toml::table& t, IndexConfig& x) {
  r.read_table(t, "index",
               {{"enabled", [&](auto& n, auto& k) { x.enabled = r.boolean(n, k); }},
                {"exact_max_vectors",
                 [&](auto& n, auto& k) { x.exact_max_vectors = r.integer<uint64_t>(n, k); }},
                {"nprobe", [&](auto& n, auto& k) { x.nprobe = r.integer<uint32_t>(n, k); }},
                {"save_interval_s",
                 [&](auto& n, auto& k) { x.save_interval_s = r.integer<uint32_t>(n, k); }}});
}

void read_gpu(Reader& r, const toml::table& t, GpuTierConfig& g) {
  r.read_table(
      t, "gpu",
      {{"backend", [&](auto& n, auto& k) { g.backend = r.choice(n, k, kGpuBackends); }},
       {"devices", [&](auto& n, auto& k) { g.devices = r.ids(n, k); }},
       {"size", [&](auto& n, auto& k) { g.size_bytes = r.size(n, k); }},
       {"handle", [&](auto& n, auto& k) { g.handle = r.choice(n, k, kGpuHandles); }},
       {"small_queue_ratio", [&](auto& n, auto& k) { g.small_queue_ratio = r.number(n, k); }}});
}

DiskPolicy disk_policy(Reader& r, const toml::node& n, const std::string& key) {
  const std::string v = r.str(n, key);
  if (v == "off") return DiskPolicy::kOff;
  if (v == "writeback") return DiskPolicy::kWriteBack;
  if (v == "persist") return DiskPolicy::kPersist;
  r.fail(key + ": unknown disk policy '" + v + "' (expected \"off\", \"writeback\" or \"persist\")",
         n.source());
  return DiskPolicy::kOff;
}

void read_session(Reader& r, const toml::table& t, SessionConfig& s) {
  r.read_table(
      t, "session",
      {{"staging_bytes", [&](auto& n, auto& k) { s.staging_bytes = r.size(n, k); }},
       {"device_staging_bytes", [&](auto& n, auto& k) { s.device_staging_bytes = r.size(n, k); }},
       {"max_leases", [&](auto& n, auto& k) { s.max_leases = r.integer<uint32_t>(n, k); }},
       {"max_pending_puts",
        [&](auto& n, auto& k) { s.max_pending_puts = r.integer<uint32_t>(n, k); }}});
}

void read_metrics(Reader& r, const toml::table& t, MetricsConfig& m) {
  r.read_table(
      t, "metrics",
      {{"listen", [&](auto& n, auto& k) { m.listen = r.str(n, k); }},
       {"nf4_error_sample", [&](auto& n, auto& k) { m.nf4_error_sample = r.number(n, k); }}});
}

void read_remote(Reader& r, const toml::table& t, RemoteTierConfig& c) {
  r.read_table(t, "remote",
               {{"seeds", [&](auto& n, auto& k) { c.seeds = r.strings(n, k); }},
                {"password", [&](auto& n, auto& k) { c.password = r.str(n, k); }},
                {"connect_timeout_ms",
                 [&](auto& n, auto& k) { c.connect_timeout_ms = r.integer<uint32_t>(n, k); }},
                {"command_timeout_ms",
                 [&](auto& n, auto& k) { c.command_timeout_ms = r.integer<uint32_t>(n, k); }},
                {"threads", [&](auto& n, auto& k) { c.threads = r.integer<uint32_t>(n, k); }},
                {"connections_per_node",
                 [&](auto& n, auto& k) { c.connections_per_node = r.integer<uint32_t>(n, k); }},
                {"max_value_bytes", [&](auto& n, auto& k) { c.max_value_bytes = r.size(n, k); }},
                {"queue_bytes", [&](auto& n, auto& k) { c.queue_bytes = r.size(n, k); }},
                {"lookup_timeout_ms",
                 [&](auto& n, auto& k) { c.lookup_timeout_ms = r.integer<uint32_t>(n, k); }},
                {"key_prefix", [&](auto& n, auto& k) { c.key_prefix = r.str(n, k); }}});
}

void read_events(Reader& r, const toml::table& t, EventsConfig& e) {
  r.read_table(
      t, "events",
      {{"endpoint", [&](auto& n, auto& k) { e.endpoint = r.str(n, k); }},
       {"replay_endpoint", [&](auto& n, auto& k) { e.replay_endpoint = r.str(n, k); }},
       {"buffer_batches", [&](auto& n, auto& k) { e.buffer_batches = r.integer<uint64_t>(n, k); }},
       {"max_batch_events",
        [&](auto& n, auto& k) { e.max_batch_events = r.integer<uint32_t>(n, k); }},
       {"batch_ms", [&](auto& n, auto& k) { e.batch_ms = r.integer<uint32_t>(n, k); }}});
}

RemotePolicy remote_policy(Reader& r, const toml::node& n, const std::string& key) {
  const std::string v = r.str(n, key);
  if (v == "off") return RemotePolicy::kOff;
  if (v == "writeback") return RemotePolicy::kWriteBack;
  if (v == "writethrough") return RemotePolicy::kWriteThrough;
  r.fail(key + ": unknown remote policy '" + v +
             "' (expected \"off\", \"writeback\" or \"writethrough\")",
         n.source());
  return RemotePolicy::kOff;
}

// [[namespace]] entries replace the default catch-all rule; `namespace = []` leaves none.
void read_namespaces(Reader& r, const toml::node& node, std::vector<NamespaceRule>& rules) {
  if (!node.is_array()) r.wrong_type(node, "namespace", "an array of tables ([[namespace]])");
  rules.clear();
  const toml::array& array = *node.as_array();
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string section = "namespace[" + std::to_string(i) + "]";
    const toml::table& t = r.table(array[i], section);
    NamespaceRule& rule = rules.emplace_back();
    r.read_table(
        t, section,
        {{"prefix", [&](auto& n, auto& k) { rule.prefix = r.str(n, k); }},
         {"arena", [&](auto& n, auto& k) { rule.arena = r.str(n, k); }},
         {"allow_uids", [&](auto& n, auto& k) { rule.allow_uids = r.ids(n, k); }},
         {"allow_gids", [&](auto& n, auto& k) { rule.allow_gids = r.ids(n, k); }},
         {"codec", [&](auto& n, auto& k) { rule.codec = r.codec(n, k); }},
         {"nf4_double_quant", [&](auto& n, auto& k) { rule.nf4_double_quant = r.boolean(n, k); }},
         {"nf4_outlier_channels",
          [&](auto& n, auto& k) { rule.nf4_outlier_channels = r.integer<uint32_t>(n, k); }},
         {"fusion_codec", [&](auto& n, auto& k) { rule.fusion_codec = r.codec(n, k); }},
         {"disk", [&](auto& n, auto& k) { rule.disk = disk_policy(r, n, k); }},
         {"compress", [&](auto& n, auto& k) { rule.compress = r.boolean(n, k); }},
         {"remote", [&](auto& n, auto& k) { rule.remote = remote_policy(r, n, k); }},
         {"remote_ttl_s", [&](auto& n, auto& k) { rule.remote_ttl_s = r.integer<uint32_t>(n, k); }},
         {"pin_bytes", [&](auto& n, auto& k) {
            // "auto" (the default): a quarter of the rule's arena; else a size (0: no pins).
            const auto* s = n.as_string();
            rule.pin_bytes =
                s != nullptr && s->get() == "auto" ? NamespaceRule::kPinBytesAuto : r.size(n, k);
          }}});
    // NF4 options set in a rule that stores nothing as NF4 are mistakes (the defaults are not).
    const bool stores_nf4 = rule.codec == Codec::kNf4 || rule.fusion_codec == Codec::kNf4;
    for (const char* key : {"nf4_double_quant", "nf4_outlier_channels"}) {
      const toml::node* n = t.get(key);
      const bool on = std::string_view(key) == "nf4_double_quant" ? rule.nf4_double_quant
                                                                  : rule.nf4_outlier_channels > 0;
      if (n != nullptr && on && !stores_nf4) {
        r.fail(section + "." + key + ": needs codec = \"nf4\" (prefix '" + rule.prefix +
                   "' uses \"" + codec_toml_name(rule.codec) + "\")",
               n->source());
      }
    }
  }
}

// [[arena]] entries: the isolation domains besides the default arena.
void read_arenas(Reader& r, const toml::node& node, std::vector<ArenaConfig>& arenas) {
  if (!node.is_array()) r.wrong_type(node, "arena", "an array of tables ([[arena]])");
  arenas.clear();
  const toml::array& array = *node.as_array();
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string section = "arena[" + std::to_string(i) + "]";
    const toml::table& t = r.table(array[i], section);
    ArenaConfig& a = arenas.emplace_back();
    r.read_table(t, section,
                 {{"name", [&](auto& n, auto& k) { a.name = r.str(n, k); }},
                  {"size", [&](auto& n, auto& k) { a.size_bytes = r.size(n, k); }},
                  {"gpu_size", [&](auto& n, auto& k) { a.gpu_size_bytes = r.size(n, k); }}});
  }
}

// The dotted key a validation message starts with: "daemon.io_threads: must be ..." ->
// "daemon.io_threads", "host.size 64 GiB does not fit" -> "host.size".
std::string leading_key(std::string_view msg) {
  size_t n = 0;
  while (n < msg.size() && (std::isalnum(static_cast<unsigned char>(msg[n])) || msg[n] == '_' ||
                            msg[n] == '.' || msg[n] == '[' || msg[n] == ']')) {
    ++n;
  }
  return std::string(msg.substr(0, n));
}

}  // namespace

const char* to_string(DiskIoBackend v) {
  return name_of(kDiskIoBackends, v);
}
const char* to_string(GpuBackend v) {
  return name_of(kGpuBackends, v);
}
const char* to_string(GpuHandle v) {
  return name_of(kGpuHandles, v);
}

Config parse(std::string_view toml_text, const std::string& origin) {
  toml::table doc;
  try {
    doc = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    throw ConfigError("TOML syntax error at line " + std::to_string(e.source().begin.line) +
                      ", column " + std::to_string(e.source().begin.column) + " of " + origin +
                      ": " + std::string(e.description()));
  }
  Config cfg = defaults();
  Reader r(origin);
  r.read_table(doc, "",
               {{"daemon", [&](auto& n, auto& k) { read_daemon(r, r.table(n, k), cfg.daemon); }},
                {"access", [&](auto& n, auto& k) { read_access(r, r.table(n, k), cfg.access); }},
                {"host", [&](auto& n, auto& k) { read_host(r, r.table(n, k), cfg.host); }},
                {"disk", [&](auto& n, auto& k) { read_disk(r, r.table(n, k), cfg.disk); }},
                {"gpu", [&](auto& n, auto& k) { read_gpu(r, r.table(n, k), cfg.gpu); }},
                {"index", [&](auto& n, auto& k) { read_index(r, r.table(n, k), cfg.index); }},
                {"session", [&](auto& n, auto& k) { read_session(r, r.table(n, k), cfg.session); }},
                {"metrics", [&](auto& n, auto& k) { read_metrics(r, r.table(n, k), cfg.metrics); }},
                {"remote", [&](auto& n, auto& k) { read_remote(r, r.table(n, k), cfg.remote); }},
                {"events", [&](auto& n, auto& k) { read_events(r, r.table(n, k), cfg.events); }},
                {"namespace", [&](auto& n, auto&) { read_namespaces(r, n, cfg.namespaces); }},
                {"arena", [&](auto& n, auto&) { read_arenas(r, n, cfg.arenas); }}});
  try {
    cfg.validate();
  } catch (const ConfigError& e) {
    // Validation knows keys, not lines: point at the line the key was set on, if it was.
    const uint32_t line = r.line_of(leading_key(e.what()));
    throw ConfigError(std::string(e.what()) +
                      (line != 0 ? " (set at line " + std::to_string(line) + " of " + origin + ")"
                                 : " (the default; not set in " + origin + ")"));
  }
  return cfg;
}

Config load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw ConfigError("cannot read config file " + file.string() + ": " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw ConfigError("cannot read config file " + file.string() + ": " + std::strerror(errno));
  }
  return parse(text.str(), file.string());
}

}  // namespace kvtier::config
