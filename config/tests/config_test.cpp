// config/: defaults, TOML parsing and its error messages, validation, namespace rules.

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "config/config.h"

using namespace kvtier;
using namespace kvtier::config;
using Catch::Contains;

namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

uint64_t shm_free_bytes() {
  struct statvfs vfs {};
  if (::statvfs("/dev/shm", &vfs) != 0) return 0;
  return static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

// Tests that accept the default host.size (1 GiB) need /dev/shm to hold it; small container
// /dev/shm mounts (Docker's 64 MiB) skip them rather than fail.
bool default_host_fits() {
  if (shm_free_bytes() >= kGiB) return true;
  WARN("/dev/shm has less than 1 GiB free: skipping a test that uses the default host.size");
  return false;
}

// Sets or unsets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

NamespaceRule rule(std::string prefix, std::vector<uid_t> uids = {}, std::vector<gid_t> gids = {}) {
  NamespaceRule r;
  r.prefix = std::move(prefix);
  r.allow_uids = std::move(uids);
  r.allow_gids = std::move(gids);
  return r;
}

// A document that sets every key to something other than its default.  Line numbers matter
// to no test; the host tier is small so that it fits any /dev/shm.
constexpr const char* kFull = R"(
[daemon]
socket = "/tmp/kv test/\"q\".sock"
state_dir = "/var/lib/kvtier-test"
shm_prefix = "kvt-1"
io_threads = 8
max_message_bytes = "512KiB"
busy_poll_us = 50
request_channel = false
lookup_index = false
lookup_index_slots = 1024
lookup_index_max_slots = 8192
max_connections = 17
drain_timeout_ms = 250
log_level = "debug"

[access]
socket_mode = 0o640
socket_group = "daemon"
admin_uids = [1001, 1002]
admin_gids = [27]

[host]
size = 50331648
prefault = false
small_queue_ratio = 0.25
ghost_entries = 4096

[session]
staging_bytes = "2MB"
max_leases = 9
max_pending_puts = 3

[metrics]
listen = "127.0.0.1:9464"
nf4_error_sample = 0.25

[[namespace]]
prefix = ""

[[namespace]]
prefix = "tenant-a/"
allow_uids = [1001]
allow_gids = [2000, 2001]
codec = "nf4"
nf4_double_quant = false
nf4_outlier_channels = 4
)";

}  // namespace

TEST_CASE("defaults: built-in values, paths from the environment", "[config]") {
  SECTION("outside systemd") {
    ScopedEnv rt("RUNTIME_DIRECTORY", nullptr), st("STATE_DIRECTORY", nullptr);
    Config c = defaults();
    CHECK(c.daemon.socket == "./var/kvtier.sock");
    CHECK(c.daemon.state_dir == "./var/lib");
  }
  SECTION("under systemd") {
    ScopedEnv rt("RUNTIME_DIRECTORY", "/run/kvtier:/run/other"),
        st("STATE_DIRECTORY", "/var/lib/kvtier");
    Config c = defaults();
    CHECK(c.daemon.socket == "/run/kvtier/kvtier.sock");
    CHECK(c.daemon.state_dir == "/var/lib/kvtier");
  }
  Config c = defaults();
  CHECK(c.daemon.shm_prefix == "kvtier");
  CHECK(c.daemon.io_threads == 2);
  CHECK(c.daemon.max_message_bytes == 4 * kMiB);
  CHECK(c.daemon.log_level == "info");
  CHECK(c.access.socket_mode == "0660");
  CHECK(c.access.admin_uids.front() == 0);
  CHECK(std::count(c.access.admin_uids.begin(), c.access.admin_uids.end(), geteuid()) == 1);
  CHECK(c.access.admin_uids.size() == (geteuid() == 0 ? 1u : 2u));
  CHECK(c.access.admin_gids.empty());
  CHECK(c.host.size_bytes == kGiB);
  CHECK(c.session.staging_bytes == 64 * kMiB);
  REQUIRE(c.namespaces.size() == 1);
  CHECK(c.namespaces[0].prefix.empty());
  CHECK(c.namespaces[0].codec == Codec::kNf4);
  CHECK(c.namespaces[0].allows(12345, 12345, {}));
  if (default_host_fits()) CHECK_NOTHROW(c.validate());
}

TEST_CASE("NF4 options: defaults on an fp16 namespace are not errors", "[config]") {
  const Config c = parse(
      "[[namespace]]\ncodec = \"fp16\"\n[[namespace]]\nprefix = \"f/\"\n"
      "codec = \"fp16\"\nfusion_codec = \"nf4\"\nnf4_outlier_channels = 2\n");
  CHECK(c.namespaces[0].nf4_double_quant);           // default, applies to nothing stored NF4
  CHECK(c.namespaces[1].nf4_outlier_channels == 2);  // its fusion tensors are NF4
  // The rendering (kvtierctl config) parses back: no NF4 options on the fp16-only rule (fuzz
  // finding 15, fuzz/crashes/config/fp16-namespace-renders-nf4-options).
  const std::string text = c.to_toml();
  INFO(text);
  CHECK(parse(text).to_toml() == text);
  CHECK_THAT(text, Contains("codec = \"fp16\"\nfusion_codec = \"fp16\"\ndisk"));
  CHECK_THAT(text, Contains("fusion_codec = \"nf4\"\nnf4_double_quant = true\n"
                            "nf4_outlier_channels = 2\n"));
}

TEST_CASE("parse: an empty document gives the defaults", "[config]") {
  if (!default_host_fits()) return;
  CHECK(parse("").to_toml() == defaults().to_toml());
  CHECK(parse("[daemon]\n[host]\n").to_toml() == defaults().to_toml());
}

TEST_CASE("parse: every key set, and to_toml() round trip", "[config]") {
  Config c = parse(kFull, "full.toml");
  CHECK(c.daemon.socket == "/tmp/kv test/\"q\".sock");
  CHECK(c.daemon.state_dir == "/var/lib/kvtier-test");
  CHECK(c.daemon.shm_prefix == "kvt-1");
  CHECK(c.daemon.io_threads == 8);
  CHECK(c.daemon.max_message_bytes == 512 * 1024);
  CHECK(c.daemon.busy_poll_us == 50);
  CHECK_FALSE(c.daemon.request_channel);
  CHECK_FALSE(c.daemon.lookup_index);
  CHECK(c.daemon.lookup_index_slots == 1024);
  CHECK(c.daemon.lookup_index_max_slots == 8192);
  CHECK(c.daemon.max_connections == 17);
  CHECK(c.daemon.drain_timeout_ms == 250);
  CHECK(c.daemon.log_level == "debug");
  CHECK(c.access.socket_mode == "0640");
  CHECK(c.access.socket_group == "daemon");  // a group every Debian has
  CHECK(c.access.admin_uids == std::vector<uid_t>{1001, 1002});
  CHECK(c.access.admin_gids == std::vector<gid_t>{27});
  CHECK(c.host.size_bytes == 48 * kMiB);
  CHECK_FALSE(c.host.prefault);
  CHECK(c.host.small_queue_ratio == 0.25);
  CHECK(c.host.ghost_entries == 4096);
  CHECK(c.session.staging_bytes == 2000000);
  CHECK(c.session.max_leases == 9);
  CHECK(c.session.max_pending_puts == 3);
  CHECK(c.metrics.listen == "127.0.0.1:9464");
  CHECK(c.metrics.nf4_error_sample == 0.25);
  REQUIRE(c.namespaces.size() == 2);  // [[namespace]] replaces the default rule
  CHECK(c.namespaces[1].prefix == "tenant-a/");
  CHECK(c.namespaces[1].allow_uids == std::vector<uid_t>{1001});
  CHECK(c.namespaces[1].allow_gids == std::vector<gid_t>{2000, 2001});
  CHECK(c.namespaces[1].codec == Codec::kNf4);
  CHECK_FALSE(c.namespaces[1].nf4_double_quant);
  CHECK(c.namespaces[1].nf4_outlier_channels == 4);
  CHECK(c.namespaces[0].nf4_double_quant);  // the default
  CHECK(c.namespaces[0].nf4_outlier_channels == 0);

  const std::string text = c.to_toml();
  INFO(text);
  CHECK_THAT(text, Contains("size = \"48MiB\""));
  const Config again = parse(text, "rendered.toml");
  CHECK(again.to_toml() == text);
  CHECK(again.host.small_queue_ratio == c.host.small_queue_ratio);
  CHECK(again.daemon.socket == c.daemon.socket);

  SECTION("no namespace rules survive the round trip") {
    Config none = c;
    none.namespaces.clear();
    const Config back = parse(none.to_toml());
    CHECK(back.namespaces.empty());
    CHECK(back.rule_for("anything") == nullptr);
  }
}

TEST_CASE("config/kvtier.toml documents the defaults", "[config]") {
  if (!default_host_fits()) return;
  ScopedEnv rt("RUNTIME_DIRECTORY", nullptr), st("STATE_DIRECTORY", nullptr);
  const Config c = load(KVTIER_SOURCE_DIR "/config/kvtier.toml");
  CHECK(c.to_toml() == defaults().to_toml());
}

TEST_CASE("parse: unknown keys and sections name the key and line", "[config]") {
  REQUIRE_THROWS_WITH(parse("[host]\nprefault = true\nsise = 1\n", "kvtier.toml"),
                      Contains("unknown key 'host.sise' at line 3 of kvtier.toml"));
  REQUIRE_THROWS_WITH(parse("\n[hots]\nsize = 1\n", "kvtier.toml"),
                      Contains("unknown section 'hots' at line 2 of kvtier.toml"));
  REQUIRE_THROWS_WITH(parse("verbose = true\n", "x.toml"),
                      Contains("unknown key 'verbose' at line 1 of x.toml"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\nprefix = \"a\"\n[[namespace]]\ncodc = \"nf4\"\n"),
                      Contains("unknown key 'namespace[1].codc' at line 4"));
}

TEST_CASE("parse: wrong types name the key, both types and the line", "[config]") {
  REQUIRE_THROWS_WITH(parse("[host]\n\nprefault = \"yes\"\n", "kvtier.toml"),
                      Contains("host.prefault: expected a boolean, got string at line 3"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nio_threads = 2.5\n"),
                      Contains("daemon.io_threads: expected an integer, got float at line 2"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nio_threads = -1\n"),
                      Contains("daemon.io_threads: -1 is out of range 0..4294967295 at line 2"));
  REQUIRE_THROWS_WITH(parse("[access]\nadmin_uids = [0, \"root\"]\n"),
                      Contains("access.admin_uids[1]: expected an integer, got string at line 2"));
  REQUIRE_THROWS_WITH(parse("host = 5\n"), Contains("host: expected a table, got integer"));
  REQUIRE_THROWS_WITH(
      parse("[namespace]\nprefix = \"\"\n"),
      Contains("namespace: expected an array of tables ([[namespace]]), got table"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\ncodec = \"int8\"\n"),
                      Contains("namespace[0].codec: unknown codec 'int8'"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nsocket = \"a\nb\"\n", "bad.toml"),
                      Contains("TOML syntax error at line 2") && Contains("of bad.toml"));
}

TEST_CASE("parse: bad sizes", "[config]") {
  REQUIRE_THROWS_WITH(parse("[host]\n\n\nsize = \"12QB\"\n", "kvtier.toml"),
                      Contains("host.size: bad size '12QB' at line 4 of kvtier.toml"));
  REQUIRE_THROWS_WITH(
      parse("[session]\nstaging_bytes = true\n"),
      Contains("session.staging_bytes: expected a size") && Contains("got boolean at line 2"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nmax_message_bytes = -4096\n"),
                      Contains("daemon.max_message_bytes: -4096 is out of range"));
}

TEST_CASE("to_toml: sizes beyond a TOML integer render as strings that parse back", "[config]") {
  // Found by fuzz/fuzz_config.cpp (fuzz/crashes/config/size-above-int64-renders-bare).
  const Config c = parse("[disk]\nsize = \"9226133410982440504\"\n");
  CHECK(c.disk.size_bytes == 9226133410982440504ull);
  const std::string toml = c.to_toml();
  CHECK(toml.find("size = \"9226133410982440504\"") != std::string::npos);
  CHECK(parse(toml).to_toml() == toml);
}

TEST_CASE("parse_size", "[config]") {
  CHECK(parse_size("4096") == 4096u);
  CHECK(parse_size("4096B") == 4096u);
  CHECK(parse_size("512KiB") == 512u << 10);
  CHECK(parse_size("64MiB") == 64ull << 20);
  CHECK(parse_size("1GiB") == 1ull << 30);
  CHECK(parse_size("2TiB") == 2ull << 40);
  CHECK(parse_size("500KB") == 500000u);
  CHECK(parse_size("3MB") == 3000000u);
  CHECK(parse_size("2GB") == 2000000000ull);
  CHECK(parse_size("1TB") == 1000000000000ull);
  CHECK(parse_size(" 64 MiB ") == 64ull << 20);
  CHECK(parse_size("0") == 0u);
  for (const char* bad : {"", "MiB", "12QB", "-1", "1.5GiB", "64mib", "64 M", "0x10",
                          "18446744073709551616", "16777216TiB", "1GiB extra"}) {
    INFO(bad);
    CHECK_FALSE(parse_size(bad).has_value());
  }
}

TEST_CASE("validate: range checks, with the line of the offending key", "[config]") {
  REQUIRE_THROWS_WITH(
      parse("[daemon]\nio_threads = 0\n", "k.toml"),
      Contains("daemon.io_threads: must be in 1..64, got 0 (set at line 2 of k.toml)"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nio_threads = 65\n"), Contains("must be in 1..64, got 65"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nbusy_poll_us = 100001\n"),
                      Contains("daemon.busy_poll_us: must be in 0..100000, got 100001"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nlookup_index_slots = 1000\n"),
                      Contains("daemon.lookup_index_slots: must be a power of two in 64..2^30"));
  REQUIRE_THROWS_WITH(
      parse("[daemon]\nlookup_index_slots = 4096\nlookup_index_max_slots = 1024\n"),
      Contains("daemon.lookup_index_max_slots: must be a power of two in lookup_index_slots"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nmax_message_bytes = \"2KiB\"\n"),
                      Contains("daemon.max_message_bytes: must be in 4KiB..1GiB, got 2 KiB"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nmax_message_bytes = \"2GiB\"\n"),
                      Contains("must be in 4KiB..1GiB, got 2 GiB"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nlog_level = \"loud\"\n"),
                      Contains("daemon.log_level: 'loud' is not one of trace, debug, info"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nshm_prefix = \"a/b\"\n"), Contains("daemon.shm_prefix:"));
  REQUIRE_THROWS_WITH(parse("[daemon]\nsocket = \"/" + std::string(120, 's') + "\"\n"),
                      Contains("a Unix socket path must be shorter than 108"));
  REQUIRE_THROWS_WITH(parse("[access]\nsocket_mode = \"0999\"\n"),
                      Contains("access.socket_mode: '0999' is not an octal permission mode"));
  REQUIRE_THROWS_WITH(parse("[access]\nsocket_mode = \"01777\"\n"),
                      Contains("access.socket_mode: '01777'"));
  REQUIRE_THROWS_WITH(parse("[access]\nsocket_mode = 0o1777\n"),
                      Contains("access.socket_mode: 1023 is not a permission mode"));
  // Regression (issue 14, defect 5): an unknown group passed validation and failed start-up.
  REQUIRE_THROWS_WITH(
      parse("[access]\nsocket_mode = \"0660\"\nsocket_group = \"no-such-group-kvtier\"\n",
            "g.toml"),
      Contains("access.socket_group: no group 'no-such-group-kvtier' on this host") &&
          Contains("(set at line 3 of g.toml)"));
  REQUIRE_THROWS_WITH(parse("[session]\nstaging_bytes = \"512KiB\"\n"),
                      Contains("session.staging_bytes: must be at least 1MiB, got 512 KiB"));
  REQUIRE_THROWS_WITH(parse("[session]\nmax_leases = 0\n"), Contains("session.max_leases:"));
  REQUIRE_THROWS_WITH(parse("[host]\nsize = \"8MiB\"\n[session]\nstaging_bytes = \"1MiB\"\n"),
                      Contains("host.size: must be at least 16MiB, got 8 MiB (set at line 2"));
  REQUIRE_THROWS_WITH(parse("[host]\nsize = \"32MiB\"\n"),
                      Contains("session.staging_bytes: 64 MiB is larger than host.size (32 MiB)"));
  REQUIRE_THROWS_WITH(parse("[host]\nsize = \"32MiB\"\nsmall_queue_ratio = 0.6\n[session]\n"
                            "staging_bytes = \"1MiB\"\n"),
                      Contains("host.small_queue_ratio: must be in (0, 0.5], got 0.6"));
  REQUIRE_THROWS_WITH(parse("[host]\nsize = \"32MiB\"\nsmall_queue_ratio = 0\n[session]\n"
                            "staging_bytes = \"1MiB\"\n"),
                      Contains("host.small_queue_ratio: must be in (0, 0.5]"));
  REQUIRE_THROWS_WITH(
      parse("[[namespace]]\nprefix = \"a/\"\n[[namespace]]\nprefix = \"b/\"\n[[namespace]]\n"
            "prefix = \"a/\"\n"),
      Contains("namespace[2].prefix: duplicate prefix 'a/' (also namespace[0]) (set at line 6"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\ncodec = \"fp16\"\nnf4_double_quant = true\n"),
                      Contains("namespace[0].nf4_double_quant: needs codec = \"nf4\""));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\ncodec = \"fp16\"\nnf4_outlier_channels = 2\n"),
                      Contains("namespace[0].nf4_outlier_channels: needs codec = \"nf4\" "
                               "(prefix '' uses \"fp16\") at line 3"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\nnf4_outlier_channels = 65\n"),
                      Contains("namespace[0].nf4_outlier_channels: must be in 0..64, got 65"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\nnf4_outlier_channels = -1\n"),
                      Contains("nf4_outlier_channels: -1 is out of range"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\nnf4_outlier_channels = \"4\"\n"),
                      Contains("nf4_outlier_channels"));
}

TEST_CASE("[metrics]: off by default; listen and nf4_error_sample checked", "[config]") {
  const std::string small = "[host]\nsize = \"32MiB\"\n[session]\nstaging_bytes = \"1MiB\"\n";
  const Config off = parse(small);
  CHECK(off.metrics.listen.empty());
  CHECK(off.metrics.nf4_error_sample == 0.0);
  CHECK(parse(small + "[metrics]\nlisten = \"[::1]:9464\"\n").metrics.listen == "[::1]:9464");
  CHECK(parse(small + "[metrics]\nnf4_error_sample = 1\n").metrics.nf4_error_sample == 1.0);
  for (const char* bad : {"localhost:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                          "127.0.0.1:94x", "::1:9464", "[127.0.0.1]:9464", ":9464"}) {
    INFO(bad);
    REQUIRE_THROWS_WITH(
        parse(small + "[metrics]\nlisten = \"" + bad + "\"\n", "m.toml"),
        Contains(std::string("metrics.listen: '") + bad + "' is not \"address:port\"") &&
            Contains("(set at line 6 of m.toml)"));
  }
  REQUIRE_THROWS_WITH(parse(small + "[metrics]\nnf4_error_sample = 1.5\n"),
                      Contains("metrics.nf4_error_sample: must be in [0, 1], got 1.5"));
  REQUIRE_THROWS_WITH(parse(small + "[metrics]\nnf4_error_sample = -0.1\n"),
                      Contains("metrics.nf4_error_sample: must be in [0, 1]"));
  REQUIRE_THROWS_WITH(parse(small + "[metrics]\nlisten = 9464\n"),
                      Contains("metrics.listen: expected a string, got integer"));
  REQUIRE_THROWS_WITH(parse(small + "[metrics]\nport = 1\n"),
                      Contains("unknown key 'metrics.port'"));

  const auto v4 = parse_listen("127.0.0.1:9464");
  REQUIRE(v4);
  CHECK(v4->address == "127.0.0.1");
  CHECK(v4->port == 9464);
  const auto v6 = parse_listen("[::1]:1");
  REQUIRE(v6);
  CHECK(v6->address == "::1");
  CHECK(v6->port == 1);
}

TEST_CASE("[remote], [events] and per-namespace remote policy", "[config]") {
  const std::string small = "[host]\nsize = \"32MiB\"\n[session]\nstaging_bytes = \"1MiB\"\n";
  const Config off = parse(small);
  CHECK_FALSE(off.remote.enabled());
  CHECK(off.events.endpoint.empty());
  CHECK(off.namespaces.at(0).remote == RemotePolicy::kOff);

  const Config on = parse(small +
                          "[remote]\nseeds = [\"10.0.0.1:7000\", \"redis-b:7001\"]\n"
                          "password = \"s3cret\"\nmax_value_bytes = \"1MiB\"\nthreads = 2\n"
                          "[events]\nendpoint = \"tcp://127.0.0.1:5557\"\n"
                          "replay_endpoint = \"tcp://127.0.0.1:5558\"\n"
                          "[[namespace]]\nprefix = \"\"\nremote = \"writethrough\"\n"
                          "remote_ttl_s = 3600\n"
                          "[[namespace]]\nprefix = \"b/\"\nremote = \"writeback\"\n");
  CHECK(on.remote.seeds == std::vector<std::string>{"10.0.0.1:7000", "redis-b:7001"});
  CHECK(on.remote.max_value_bytes == (1u << 20));
  CHECK(on.remote.threads == 2);
  CHECK(on.events.replay_endpoint == "tcp://127.0.0.1:5558");
  CHECK(on.namespaces.at(0).remote == RemotePolicy::kWriteThrough);
  CHECK(on.namespaces.at(0).remote_ttl_s == 3600);
  CHECK(on.namespaces.at(1).remote == RemotePolicy::kWriteBack);
  // Round trip, the password left out of the effective settings.
  const std::string text = on.to_toml();
  CHECK(text.find("s3cret") == std::string::npos);
  const Config back = parse(text);
  CHECK(back.remote.seeds == on.remote.seeds);
  CHECK(back.namespaces.at(0).remote == RemotePolicy::kWriteThrough);
  CHECK(back.events.endpoint == on.events.endpoint);

  REQUIRE_THROWS_WITH(parse(small + "[[namespace]]\nprefix = \"\"\nremote = \"writeback\"\n"),
                      Contains("namespace[0].remote: needs a remote tier ([remote] seeds)"));
  REQUIRE_THROWS_WITH(parse(small + "[remote]\nseeds = [\"10.0.0.1:7000\"]\n"
                                    "[[namespace]]\nremote = \"always\"\n"),
                      Contains("unknown remote policy 'always'"));
  for (const char* bad : {"redis", ":7000", "redis:0", "redis:70000", "redis:7x"}) {
    INFO(bad);
    REQUIRE_THROWS_WITH(parse(small + "[remote]\nseeds = [\"" + bad + "\"]\n"),
                        Contains(std::string("remote.seeds: '") + bad + "' is not \"host:port\""));
  }
  REQUIRE_THROWS_WITH(parse(small + "[remote]\nseeds = \"a:1\"\n"),
                      Contains("remote.seeds: expected an array of strings"));
  REQUIRE_THROWS_WITH(parse(small + "[remote]\nkey_prefix = \"a{b}\"\n"),
                      Contains("remote.key_prefix"));
  REQUIRE_THROWS_WITH(parse(small + "[events]\nendpoint = \"127.0.0.1:5557\"\n"),
                      Contains("events.endpoint: '127.0.0.1:5557' is not a ZeroMQ endpoint"));
  REQUIRE_THROWS_WITH(parse(small + "[events]\nreplay_endpoint = \"tcp://127.0.0.1:1\"\n"),
                      Contains("events.replay_endpoint: needs events.endpoint"));
}

TEST_CASE("admin lists: default {0, euid} unless the file sets one", "[config]") {
  const char* small = "[host]\nsize = \"32MiB\"\n[session]\nstaging_bytes = \"1MiB\"\n";
  CHECK(parse(small).access.admin_uids == defaults().access.admin_uids);
  Config c = parse(std::string(small) + "[access]\nadmin_gids = [50]\n");
  CHECK(c.access.admin_uids.empty());
  CHECK(c.access.admin_gids == std::vector<gid_t>{50});
  c = parse(std::string(small) + "[access]\nadmin_uids = []\n");
  CHECK(c.access.admin_uids.empty());
  CHECK(c.access.admin_gids.empty());
}

TEST_CASE("rule_for: longest matching prefix", "[config]") {
  Config c;
  c.namespaces = {rule("llama/"), rule(""), rule("llama/70b/"), rule("qwen")};
  CHECK(c.rule_for("llama/70b/tenant")->prefix == "llama/70b/");
  CHECK(c.rule_for("llama/8b")->prefix == "llama/");
  CHECK(c.rule_for("llama")->prefix == "");
  CHECK(c.rule_for("qwen2-vl")->prefix == "qwen");
  CHECK(c.rule_for("")->prefix == "");
  c.namespaces.erase(c.namespaces.begin() + 1);  // no catch-all: unmatched names are refused
  CHECK(c.rule_for("mistral") == nullptr);
  CHECK(c.rule_for("llama/8b")->prefix == "llama/");
}

TEST_CASE("NamespaceRule::allows", "[config]") {
  NamespaceRule open;
  CHECK(open.allows(0, 0, {}));
  CHECK(open.allows(4242, 4242, {1, 2}));

  NamespaceRule r = rule("t/", {1001}, {2000});
  CHECK(r.allows(1001, 100, {}));         // by uid
  CHECK(r.allows(1500, 2000, {}));        // by primary gid
  CHECK(r.allows(1500, 100, {7, 2000}));  // by supplementary group
  CHECK_FALSE(r.allows(1500, 100, {7, 8}));
  CHECK_FALSE(r.allows(0, 0, {}));  // root is not special here

  NamespaceRule gids_only = rule("", {}, {2000});
  CHECK_FALSE(gids_only.allows(1001, 100, {}));
  CHECK(gids_only.allows(1001, 100, {2000}));
}

TEST_CASE("HostTierConfig::validate checks /dev/shm capacity", "[config]") {
  HostTierConfig huge;
  huge.size_bytes = 1ull << 50;  // 1 PiB
  REQUIRE_THROWS_WITH(huge.validate("/dev/shm"),
                      Contains("host.size 1 PiB does not fit /dev/shm (") && Contains(" total, ") &&
                          Contains(" free); lower host.size or grow /dev/shm"));
  HostTierConfig small;
  small.size_bytes = 16 * kMiB;
  if (shm_free_bytes() >= small.size_bytes) CHECK_NOTHROW(small.validate("/dev/shm"));
  REQUIRE_THROWS_WITH(small.validate("/nonexistent/shm"),
                      Contains("host.size: cannot check the free space of /nonexistent/shm"));
  REQUIRE_THROWS_WITH(
      parse("[host]\nsize = \"1024TiB\"\n"),
      Contains("host.size 1 PiB does not fit /dev/shm") && Contains("(set at line 2"));
}

TEST_CASE("load: a missing file", "[config]") {
  REQUIRE_THROWS_AS(load("/nonexistent/kvtier.toml"), ConfigError);
  REQUIRE_THROWS_WITH(load("/nonexistent/kvtier.toml"),
                      Contains("cannot read config file /nonexistent/kvtier.toml"));
}

TEST_CASE("[disk] keys and per-namespace disk policy", "[config]") {
  if (!default_host_fits()) return;
  const std::string text =
      "[daemon]\nstate_dir = \"/srv/kv\"\n"
      "[disk]\nsize = \"2GiB\"\nregion_bytes = \"32MiB\"\nio_backend = \"threads\"\n"
      "o_direct = false\nthreads = 4\nwrite_queue_bytes = \"64MiB\"\n"
      "[[namespace]]\nprefix = \"\"\n"
      "[[namespace]]\nprefix = \"p/\"\ndisk = \"persist\"\ncompress = false\n"
      "[[namespace]]\nprefix = \"x/\"\ndisk = \"off\"\n";
  Config c = parse(text);
  CHECK(c.disk.enabled);
  CHECK(c.disk.size_bytes == 2048 * kMiB);
  CHECK(c.disk.region_bytes == 32 * kMiB);
  CHECK(c.disk.io_backend == DiskIoBackend::kThreads);
  CHECK_FALSE(c.disk.o_direct);
  CHECK(c.disk_dir() == std::filesystem::path("/srv/kv/disk"));
  CHECK(c.rule_for("a")->disk == DiskPolicy::kWriteBack);
  CHECK(c.rule_for("a")->compress);
  CHECK(c.rule_for("p/m")->disk == DiskPolicy::kPersist);
  CHECK_FALSE(c.rule_for("p/m")->compress);
  CHECK(c.rule_for("x/m")->disk == DiskPolicy::kOff);
  CHECK(parse(c.to_toml()).to_toml() == c.to_toml());

  REQUIRE_THROWS_WITH(parse("[disk]\nio_backend = \"aio\"\n"),
                      Contains("disk.io_backend: 'aio' is not one of"));
  REQUIRE_THROWS_WITH(parse("[disk]\nsize = \"64MiB\"\n"),
                      Contains("disk.size: must hold at least two regions"));
  REQUIRE_THROWS_WITH(parse("[[namespace]]\nprefix = \"\"\ndisk = \"sometimes\"\n"),
                      Contains("unknown disk policy 'sometimes'") && Contains("line 3"));
  CHECK_NOTHROW(parse("[disk]\nenabled = false\nsize = 1\n"));
}

TEST_CASE("[gpu] keys: backend, devices, size, handle", "[config]") {
  if (!default_host_fits()) return;
  Config d = parse("");
  CHECK(d.gpu.backend == GpuBackend::kAuto);
  CHECK(d.gpu.devices.empty());
  CHECK(d.gpu.size_bytes == kGiB);
  CHECK(d.gpu.handle == GpuHandle::kVmm);

  Config c = parse(
      "[gpu]\nbackend = \"emulation\"\ndevices = [0, 1]\nsize = \"64MiB\"\nhandle = \"ipc\"\n"
      "small_queue_ratio = 0.2\n");
  CHECK(c.gpu.backend == GpuBackend::kEmulation);
  CHECK(c.gpu.devices == std::vector<uint32_t>{0, 1});
  CHECK(c.gpu.size_bytes == 64 * kMiB);
  CHECK(c.gpu.handle == GpuHandle::kIpc);
  CHECK(c.gpu.small_queue_ratio == 0.2);
  CHECK(parse(c.to_toml()).to_toml() == c.to_toml());

  REQUIRE_THROWS_WITH(parse("[gpu]\nbackend = \"rocm\"\n"),
                      Contains("gpu.backend: 'rocm' is not one of") && Contains("line 2"));
  REQUIRE_THROWS_WITH(parse("[gpu]\nhandle = \"dmabuf\"\n"), Contains("gpu.handle"));
  REQUIRE_THROWS_WITH(parse("[gpu]\nsize = \"4KiB\"\n"), Contains("gpu.size: must be at least"));
  REQUIRE_THROWS_WITH(parse("[gpu]\ndevices = [1, 1]\n"), Contains("listed twice"));
  REQUIRE_THROWS_WITH(parse("[gpu]\ndevises = [1]\n"), Contains("unknown key 'gpu.devises'"));
}

TEST_CASE("namespace pin_bytes: auto, sizes, the arena's bound, round trip", "[config]") {
  const std::string small = "[host]\nsize = \"64MiB\"\n[session]\nstaging_bytes = \"1MiB\"\n";
  const Config def = parse(small);
  CHECK(def.namespaces.at(0).pin_bytes == NamespaceRule::kPinBytesAuto);
  CHECK(def.pin_quota(def.namespaces.at(0)) == 16 * kMiB);  // a quarter of host.size

  const Config c = parse(small +
                         "[[arena]]\nname = \"t\"\nsize = \"32MiB\"\n"
                         "[[namespace]]\nprefix = \"\"\npin_bytes = \"8MiB\"\n"
                         "[[namespace]]\nprefix = \"t/\"\narena = \"t\"\n"
                         "[[namespace]]\nprefix = \"none/\"\npin_bytes = 0\n"
                         "[[namespace]]\nprefix = \"auto/\"\npin_bytes = \"auto\"\n");
  CHECK(c.pin_quota(c.namespaces.at(0)) == 8 * kMiB);
  CHECK(c.pin_quota(c.namespaces.at(1)) == 8 * kMiB);  // a quarter of arena t
  CHECK(c.pin_quota(c.namespaces.at(2)) == 0);
  CHECK(c.namespaces.at(3).pin_bytes == NamespaceRule::kPinBytesAuto);
  const std::string text = c.to_toml();
  CHECK(text.find("pin_bytes = \"auto\"") != std::string::npos);
  const Config back = parse(text);
  CHECK(back.namespaces.at(0).pin_bytes == 8 * kMiB);
  CHECK(back.namespaces.at(3).pin_bytes == NamespaceRule::kPinBytesAuto);
  CHECK(back.to_toml() == text);

  REQUIRE_THROWS_WITH(parse(small + "[[namespace]]\nprefix = \"\"\npin_bytes = \"128MiB\"\n"),
                      Contains("namespace[0].pin_bytes: 128 MiB is larger than its arena") &&
                          Contains("host.size"));
  REQUIRE_THROWS_WITH(parse(small + "[[arena]]\nname = \"t\"\nsize = \"32MiB\"\n"
                                    "[[namespace]]\nprefix = \"t/\"\narena = \"t\"\n"
                                    "pin_bytes = \"48MiB\"\n"),
                      Contains("namespace[0].pin_bytes") && Contains("arena 't'"));
  REQUIRE_THROWS_WITH(parse(small + "[[namespace]]\nprefix = \"\"\npin_bytes = \"lots\"\n"),
                      Contains("pin_bytes: bad size 'lots'"));
  REQUIRE_THROWS_WITH(parse(small + "[[namespace]]\nprefix = \"\"\npin_bytes = -1\n"),
                      Contains("pin_bytes"));
}
