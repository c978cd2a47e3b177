// Isolation domains (issue 14): each [[arena]] is a host arena of its own, mapped only by the
// peers its namespace rules allow, sized and evicted within its own budget.  The tenants here
// are child processes that drop to another uid and gid (the rules name their gids); the test
// itself runs as root (as CI does) and skips otherwise.  KVTIER_TEST_TENANT_KEEP_UID=1 keeps
// the tenants' uid 0 (only the gid changes): the GPU host refuses non-root processes its files.
#include <catch2/catch.hpp>

#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/frame.h"
#include "common/wire.h"
#include "kvtier/client.h"
#include "tests/testing/daemon.h"
#include "tests/testing/device_read.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;

namespace {

constexpr uid_t kUidA = 10001;
constexpr uid_t kUidB = 10002;
constexpr uint64_t kTokens = 64;  // a [64, 128] fp16 tensor: 16 KiB

// Tenant A's and B's namespaces live in arenas "a" and "b"; the default arena is root's.
std::string isolation_toml(uint64_t arena_bytes, uint64_t a_gpu_bytes = 0) {
  std::ostringstream t;
  t << "[access]\nsocket_mode = \"0666\"\n"
    << "[[arena]]\nname = \"a\"\nsize = " << arena_bytes << "\ngpu_size = " << a_gpu_bytes << "\n"
    << "[[arena]]\nname = \"b\"\nsize = " << arena_bytes << "\n"
    << "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\nallow_gids = [0]\n"
    << "[[namespace]]\nprefix = \"tenantA/\"\ncodec = \"fp16\"\narena = \"a\"\nallow_gids = ["
    << kUidA << "]\n"
    << "[[namespace]]\nprefix = \"tenantB/\"\ncodec = \"fp16\"\narena = \"b\"\nallow_gids = ["
    << kUidB << "]\n";
  return t.str();
}

// Bytes no other tenant writes: a tenant's marker found in another's mappings is a leak.
std::vector<uint8_t> marker_bytes(uint8_t tenant, uint64_t i) {
  std::vector<uint8_t> v(kTokens * 128 * 2);
  uint64_t x = 0x9e3779b97f4a7c15ull * (tenant + 1) + i;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

// Runs `body` in a child process with gid `uid` and no supplementary groups, and uid `uid`
// unless KVTIER_TEST_TENANT_KEEP_UID=1; its return value is the exit code.
int as_uid(uid_t uid, const std::function<int()>& body) {
  static const bool keep_uid = std::getenv("KVTIER_TEST_TENANT_KEEP_UID") != nullptr;
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0) ::_exit(90);
    if (!keep_uid && ::setuid(uid) != 0) ::_exit(91);
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A raw MapArenaReq (or MapGpuPoolReq) on a fresh connection: the reply's code, and whether
// a descriptor came.
std::pair<Errc, bool> raw_map_arena(const std::string& socket, uint32_t id, bool gpu = false) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return {Errc::kIo, 0};
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(gpu ? wire::CreateRequestMsg(fbb, 1, wire::Request::MapGpuPoolReq,
                                          wire::CreateMapGpuPoolReq(fbb, id).Union())
                 : wire::CreateRequestMsg(fbb, 1, wire::Request::MapArenaReq,
                                          wire::CreateMapArenaReq(fbb, id).Union()));
  auto body = wire_util::bytes_of(fbb);
  auto h =
      encode_header({kProtocolVersion, FrameKind::kRequest, static_cast<uint32_t>(body.size())});
  std::vector<int> fds;
  if (!send_all(fd, h, body, {})) return {Errc::kIo, false};
  std::array<std::byte, kFrameHeaderBytes> rh;
  if (!recv_all(fd, rh, fds)) return {Errc::kIo, false};
  auto hdr = decode_header(rh, 1 << 20);
  if (!hdr) return {Errc::kIo, false};
  std::vector<std::byte> reply(hdr->length);
  if (!recv_all(fd, reply, fds)) return {Errc::kIo, false};
  ::close(fd);
  const bool got_fd = !fds.empty();
  for (int f : fds) ::close(f);
  const auto* msg = wire_util::verify_response(reply);
  return {msg ? static_cast<Errc>(msg->code()) : Errc::kProtocol, got_fd};
}

// Every /dev/shm object this process maps, with the bytes of the readable ones.
struct ShmMapping {
  std::string path;
  const std::byte* begin = nullptr;
  size_t size = 0;
  bool readable = false;
};

std::vector<ShmMapping> shm_mappings() {
  std::vector<ShmMapping> out;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    const auto at = line.find("/dev/shm/");
    if (at == std::string::npos) continue;
    ShmMapping m;
    m.path = line.substr(at);
    unsigned long lo = 0, hi = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    m.begin = reinterpret_cast<const std::byte*>(lo);
    m.size = hi - lo;
    m.readable = perms[0] == 'r';
    out.push_back(m);
  }
  return out;
}

bool maps_contain(const std::vector<uint8_t>& needle) {
  for (const auto& m : shm_mappings())
    if (m.readable && ::memmem(m.begin, m.size, needle.data(), needle.size()) != nullptr)
      return true;
  return false;
}

// A tenant's put of block i of its marker bytes, then a bit-exact get.  0 when all is well.
int put_and_read(Client& c, const std::string& ns, uint8_t tenant, uint64_t i) {
  const BlockKey key{i + 1, tenant};
  auto bytes = marker_bytes(tenant, i);
  std::vector<TensorIn> t = {TensorIn{"k", DType::kF16, {kTokens, 128}, bytes.data()}};
  Status st = c.put(ns, key, t);
  if (!st && st.code() != Errc::kAlreadyExists) return 10;
  auto lease = c.get(ns, std::span(&key, 1));
  if (!lease || lease->found() != 1) return 11;
  const TensorView* k = lease->block(0).tensor("k");
  if (k == nullptr || k->bytes != bytes.size() || std::memcmp(k->data, bytes.data(), k->bytes))
    return 12;
  return 0;
}

nlohmann::json arena_stats(Client& c, const std::string& domain) {
  auto j = nlohmann::json::parse(c.stats_json().value());
  for (const auto& a : j["arenas"])
    if (a["domain"] == domain) return a;
  return {};
}

// The tenants are other uids: they must reach the socket through the daemon's directory
// (created under the umask, 0700 on some hosts).
void open_to_tenants(const Daemon& d) {
  std::filesystem::permissions(d.dir(), std::filesystem::perms(0755));
}

bool running_as_root() {
  if (::geteuid() == 0) return true;
  WARN("isolation tests need root (to run tenants under other uids): skipped");
  return false;
}

}  // namespace

TEST_CASE("a tenant maps its own arena only, and another tenant's bytes never reach it") {
  if (!running_as_root()) return;
  DaemonOptions o;
  o.extra_toml = isolation_toml(32ull << 20);
  Daemon d(o);
  open_to_tenants(d);
  const std::string sock = d.socket();

  // Tenant B stores blocks whose bytes only B knows.
  REQUIRE(as_uid(kUidB, [&] {
            auto c = Client::connect(sock);
            if (!c) return 20;
            for (uint64_t i = 0; i < 4; ++i)
              if (int rc = put_and_read(**c, "tenantB/m", 1, i)) return rc;
            // B itself may not use A's namespaces nor map A's or the default arena.
            const BlockKey k{1, 0};
            if ((*c)->lookup("tenantA/m", std::span(&k, 1)).status().code() !=
                Errc::kPermissionDenied)
              return 21;
            if (raw_map_arena(sock, 1).first != Errc::kPermissionDenied) return 22;
            if (raw_map_arena(sock, 0).first != Errc::kPermissionDenied) return 23;
            return 0;
          }) == 0);

  // Tenant A works with its own blocks, and cannot get at B's by any request.
  REQUIRE(
      as_uid(kUidA, [&] {
        auto c = Client::connect(sock);
        if (!c) return 30;
        for (uint64_t i = 0; i < 4; ++i)
          if (int rc = put_and_read(**c, "tenantA/m", 0, i)) return rc;
        const BlockKey kb{1, 1};
        if ((*c)->get("tenantB/m", std::span(&kb, 1)).status().code() != Errc::kPermissionDenied)
          return 31;
        if ((*c)->lookup("tenantB/m", std::span(&kb, 1)).status().code() != Errc::kPermissionDenied)
          return 32;
        auto [b_code, b_fd] = raw_map_arena(sock, 2);  // B's arena
        if (b_code != Errc::kPermissionDenied || b_fd) return 33;
        auto [d_code, d_fd] = raw_map_arena(sock, 0);  // the default (root's) arena
        if (d_code != Errc::kPermissionDenied || d_fd) return 34;
        auto [a_code, a_fd] = raw_map_arena(sock, 1);  // its own
        if (a_code != Errc::kOk || !a_fd) return 35;
        if (raw_map_arena(sock, 7).first != Errc::kNotFound) return 36;
        // What A maps: its own arena, nothing of B's or the default's.
        bool own = false;
        for (const auto& m : shm_mappings()) {
          if (m.path.find("-arena-b") != std::string::npos) return 37;
          if (m.path.find("-host-0") != std::string::npos) return 38;
          own |= m.path.find("-arena-a") != std::string::npos;
        }
        if (!own) return 39;
        // B's bytes appear nowhere A can read in shared memory; A's own do.
        for (uint64_t i = 0; i < 4; ++i)
          if (maps_contain(marker_bytes(1, i))) return 40;
        if (!maps_contain(marker_bytes(0, 0))) return 41;
        return 0;
      }) == 0);

  // The blocks sit in their domains' arenas.
  auto admin = Client::connect(sock).value();
  CHECK(arena_stats(*admin, "a")["blocks"] == 4);
  CHECK(arena_stats(*admin, "b")["blocks"] == 4);
  CHECK(arena_stats(*admin, "")["blocks"] == 0);
  // kvtierctl stats shows a row per domain arena.
  std::string cmd = std::string(KVTIER_BINARY_DIR) + "/cli/kvtierctl -s " + sock + " stats";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  CHECK(::pclose(p) == 0);
  CHECK_THAT(out, Catch::Contains("host/a") && Catch::Contains("host/b"));
}

TEST_CASE("each isolation domain is evicted within its own budget") {
  if (!running_as_root()) return;
  DaemonOptions o;
  o.extra_toml = isolation_toml(16ull << 20);
  o.staging_bytes = 1ull << 20;
  o.disk = false;
  Daemon d(o);
  open_to_tenants(d);
  const std::string sock = d.socket();
  REQUIRE(as_uid(kUidB, [&] {
            auto c = Client::connect(sock);
            if (!c) return 20;
            for (uint64_t i = 0; i < 8; ++i)
              if (int rc = put_and_read(**c, "tenantB/m", 1, i)) return rc;
            return 0;
          }) == 0);
  // A writes ~4x its arena: its own blocks are evicted, B's stay.
  REQUIRE(as_uid(kUidA, [&] {
            auto c = Client::connect(sock);
            if (!c) return c.status().code() == Errc::kPermissionDenied ? 29 : 30;
            for (uint64_t i = 0; i < 4096; ++i)
              if (int rc = put_and_read(**c, "tenantA/m", 0, i)) return rc;
            return 0;
          }) == 0);
  auto admin = Client::connect(sock).value();
  auto a = arena_stats(*admin, "a");
  auto b = arena_stats(*admin, "b");
  CHECK(a["capacity_bytes"] == 16ull << 20);
  CHECK(a["used_bytes"].get<uint64_t>() <= 16ull << 20);
  CHECK(a["evictions"].get<uint64_t>() > 0);
  CHECK(b["blocks"] == 8);
  CHECK(b["evictions"] == 0);
  REQUIRE(as_uid(kUidB, [&] {
            auto c = Client::connect(sock);
            if (!c) return 20;
            std::vector<BlockKey> keys;
            for (uint64_t i = 0; i < 8; ++i) keys.push_back({i + 1, 1});
            auto n = (*c)->lookup("tenantB/m", keys);
            return n && *n == 8 ? 0 : 21;
          }) == 0);
}

TEST_CASE("an isolation domain without gpu_size stays off the shared GPU pools") {
  if (!running_as_root()) return;
  DaemonOptions o;
  o.extra_toml = isolation_toml(32ull << 20);
  o.gpu_backend = "emulation";
  Daemon d(o);
  open_to_tenants(d);
  const std::string sock = d.socket();
  REQUIRE(as_uid(kUidA, [&] {
            auto c = Client::connect(sock);
            if (!c) return c.status().code() == Errc::kPermissionDenied ? 29 : 30;
            const BlockKey key{1, 0};
            auto bytes = marker_bytes(0, 0);
            std::vector<TensorIn> t = {TensorIn{"k", DType::kF16, {kTokens, 128}, bytes.data()}};
            if (!(*c)->put("tenantA/m", key, t)) return 31;
            // A GPU get is served from A's host arena: a GPU pool would be readable by every
            // client of the default domain.
            auto lease = (*c)->get("tenantA/m", std::span(&key, 1), GetOptions{true, -1});
            if (!lease || lease->found() != 1 || lease->block(0).on_gpu) return 32;
            const TensorView* k = lease->block(0).tensor("k");
            if (!k || std::memcmp(k->data, bytes.data(), bytes.size()) != 0) return 33;
            return 0;
          }) == 0);
  auto admin = Client::connect(sock).value();
  auto j = nlohmann::json::parse(admin->stats_json().value());
  uint64_t gpu_blocks = 0;
  for (const auto& p : j["tiers"]["gpu"]["pools"]) gpu_blocks += p["blocks"].get<uint64_t>();
  CHECK(gpu_blocks == 0);
  CHECK(arena_stats(*admin, "a")["blocks"] == 1);
}

TEST_CASE("a domain with gpu_size gets GPU pools of its own, mapped by its peers only") {
  if (!running_as_root()) return;
  // KVTIER_TEST_GPU_BACKEND=cuda runs it on a real GPU (scripts/gpu_check.sh); CI emulates.
  // This process never touches CUDA itself: its tenants are forked children, and a child of a
  // process that initialised CUDA cannot use it.  The daemon says whether it found a device.
  const char* env = std::getenv("KVTIER_TEST_GPU_BACKEND");
  const std::string backend = env && *env ? env : "emulation";
  DaemonOptions o;
  o.extra_toml = isolation_toml(32ull << 20, 8ull << 20);
  o.gpu_backend = backend;
  o.gpu_devices = "[0]";
  Daemon d(o);
  open_to_tenants(d);
  {
    auto c = Client::connect(d.socket()).value();
    if (c->gpu_devices().empty()) {
      WARN("no usable CUDA device: skipped (gpu.backend = " << backend << " opened no GPU tier)");
      return;
    }
  }
  const std::string sock = d.socket();
  const uint32_t a_pool = (1u << 16) | 0;  // GpuTier::pool_id(device 0, domain 1)
  REQUIRE(as_uid(kUidA, [&] {
            auto c = Client::connect(sock);
            if (!c) return c.status().code() == Errc::kPermissionDenied ? 29 : 30;
            const BlockKey key{1, 0};
            auto bytes = marker_bytes(0, 0);
            std::vector<TensorIn> t = {TensorIn{"k", DType::kF16, {kTokens, 128}, bytes.data()}};
            if (!(*c)->put("tenantA/m", key, t)) return 31;
            auto lease = (*c)->get("tenantA/m", std::span(&key, 1), GetOptions{true, -1});
            if (!lease || lease->found() != 1 || !lease->block(0).on_gpu) return 32;
            auto k = kvtier::testing::read_tensor(*lease->block(0).tensor("k"));
            if (!k || k->size() != bytes.size() ||
                std::memcmp(k->data(), bytes.data(), bytes.size()))
              return 33;
            if (raw_map_arena(sock, a_pool, true).first != Errc::kOk) return 34;
            if (raw_map_arena(sock, 0, true).first != Errc::kPermissionDenied) return 35;
            return 0;
          }) == 0);
  REQUIRE(as_uid(kUidB, [&] {
            auto [code, fd] = raw_map_arena(sock, a_pool, true);
            if (code != Errc::kPermissionDenied || fd) return 40;
            // B has no pool: a GPU get of its blocks is served from its host arena.
            auto c = Client::connect(sock);
            if (!c) return 41;
            const BlockKey key{1, 1};
            auto bytes = marker_bytes(1, 0);
            std::vector<TensorIn> t = {TensorIn{"k", DType::kF16, {kTokens, 128}, bytes.data()}};
            if (!(*c)->put("tenantB/m", key, t)) return 42;
            auto lease = (*c)->get("tenantB/m", std::span(&key, 1), GetOptions{true, -1});
            if (!lease || lease->found() != 1 || lease->block(0).on_gpu) return 43;
            return 0;
          }) == 0);
  auto admin = Client::connect(sock).value();
  auto j = nlohmann::json::parse(admin->stats_json().value());
  std::map<std::string, uint64_t> blocks;
  for (const auto& p : j["tiers"]["gpu"]["pools"])
    blocks[p["domain"]] += p["blocks"].get<uint64_t>();
  CHECK(blocks[""] == 0);
  CHECK(blocks["a"] == 1);
  CHECK(blocks.count("b") == 0);
}

TEST_CASE("isolation domains in the configuration: names, sizes and references are checked") {
  DaemonOptions o;
  o.extra_toml = "[[namespace]]\nprefix = \"\"\narena = \"nope\"\n";
  CHECK_THROWS_WITH(Daemon(o), Catch::Contains("namespace[0].arena: no [[arena]] named 'nope'"));
  o.extra_toml = "[[arena]]\nname = \"a/b\"\nsize = \"32MiB\"\n";
  CHECK_THROWS_WITH(Daemon(o), Catch::Contains("arena[0].name"));
  o.extra_toml = "[[arena]]\nname = \"a\"\nsize = \"1MiB\"\n";
  CHECK_THROWS_WITH(Daemon(o), Catch::Contains("arena[0].size") && Catch::Contains("line"));
  o.extra_toml =
      "[[arena]]\nname = \"a\"\nsize = \"32MiB\"\n[[arena]]\nname = \"a\"\nsize = "
      "\"32MiB\"\n";
  CHECK_THROWS_WITH(Daemon(o), Catch::Contains("duplicate arena 'a'"));
  o.extra_toml = "[[arena]]\nname = \"huge\"\nsize = \"1024TiB\"\n";
  CHECK_THROWS_WITH(Daemon(o),
                    Catch::Contains("[[arena]] sizes") && Catch::Contains("does not fit /dev/shm"));
}
