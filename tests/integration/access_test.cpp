// Access rules, socket permissions, shutdown and the process-wide arena mapping.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;

namespace {
const BlockKey kKey{0x1234, 0x5678};
}

TEST_CASE("namespace allow lists and admin rights are enforced by peer credentials") {
  DaemonOptions o;
  // uid 0 (this test) may use "public/" but not "secret/", and is not an admin.
  o.extra_toml =
      "[access]\nadmin_uids = [12345]\n"
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\n"
      "[[namespace]]\nprefix = \"secret/\"\nallow_uids = [12345]\n";
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  kvtier::testing::KvBlock b(kKey, 4);
  CHECK(c->put("public/m", kKey, b.tensors).is_ok());
  Status denied = c->put("secret/m", kKey, b.tensors);
  CHECK(denied.code() == Errc::kPermissionDenied);
  CHECK_THAT(denied.message(), Catch::Contains("secret/m"));
  CHECK(c->lookup("secret/m", std::span(&kKey, 1)).status().code() == Errc::kPermissionDenied);
  CHECK(c->get("secret/m", std::span(&kKey, 1)).status().code() == Errc::kPermissionDenied);

  CHECK(c->stats_json().is_ok());
  CHECK(c->health_json().is_ok());
  CHECK(c->list_json().status().code() == Errc::kPermissionDenied);
  CHECK(c->clients_json().status().code() == Errc::kPermissionDenied);
  CHECK(c->evict("", {}, true).status().code() == Errc::kPermissionDenied);
  auto j = nlohmann::json::parse(c->stats_json().value());
  CHECK(j["counters"]["permission_denied"].get<uint64_t>() >= 6);
}

TEST_CASE("the socket is created with the configured mode") {
  Daemon d;
  struct stat st {};
  REQUIRE(::stat(d.socket().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
}

TEST_CASE("SIGTERM drains: exit 0, socket and shared memory removed, clients see unavailable") {
  auto d = std::make_unique<Daemon>();
  auto c = Client::connect(d->socket()).value();
  kvtier::testing::KvBlock b(kKey, 4);
  REQUIRE(c->put("ns", kKey, b.tensors).is_ok());
  auto lease = c->get("ns", std::span(&kKey, 1)).value();
  auto health = nlohmann::json::parse(c->health_json().value());
  std::string shm = health["tiers"]["host"]["shm"];
  REQUIRE(std::filesystem::exists(shm));
  CHECK(d->stop() == 0);
  CHECK_FALSE(std::filesystem::exists(d->socket()));
  CHECK_FALSE(std::filesystem::exists(shm));
  // The lease's memory stays mapped and readable in this process.
  CHECK(kvtier::testing::check_kv_block(lease.block(0), 4));
  CHECK(c->lookup("ns", std::span(&kKey, 1)).status().code() == Errc::kUnavailable);
  CHECK(lease.release().is_ok());  // nothing to give back: the daemon is gone
}

TEST_CASE("an arena is mapped once per process, shared by its connections") {
  Daemon d;
  auto a = Client::connect(d.socket()).value();
  auto b = Client::connect(d.socket()).value();
  kvtier::testing::KvBlock blk(kKey, 4);
  REQUIRE(a->put("ns", kKey, blk.tensors).is_ok());
  auto la = a->get("ns", std::span(&kKey, 1)).value();
  auto lb = b->get("ns", std::span(&kKey, 1)).value();
  CHECK(la.block(0).tensors[0].data == lb.block(0).tensors[0].data);
  auto health = nlohmann::json::parse(a->health_json().value());
  std::string shm = health["tiers"]["host"]["shm"];
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find(shm) != std::string::npos;
  CHECK(n == 1);
}

namespace {

struct Run {
  int rc = 0;
  std::string out;
};

// Runs kvtierd to completion with `args`, stdout and stderr together.
Run run_kvtierd(const std::string& args) {
  std::string cmd = kvtier::testing::kvtierd_path() + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  Run r;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) r.out.append(buf, n);
  r.rc = ::pclose(p);
  return r;
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::string host_shm(Client& c) {
  return nlohmann::json::parse(c.health_json().value())["tiers"]["host"]["shm"];
}

// A put and a bit-exact get through a new connection.
void serves_its_own_bytes(const Daemon& d, uint64_t tokens) {
  auto c = Client::connect(d.socket()).value();
  const BlockKey key{tokens, 0xabc};
  kvtier::testing::KvBlock b(key, tokens);
  Status st = c->put("ns", key, b.tensors);
  REQUIRE((st.is_ok() || st.code() == Errc::kAlreadyExists));
  auto lease = c->get("ns", std::span(&key, 1)).value();
  REQUIRE(lease.found() == 1);
  CHECK(kvtier::testing::check_kv_block(lease.block(0), tokens));
}

}  // namespace

TEST_CASE("the daemon refuses configurations it cannot serve") {
  SECTION("a host tier larger than /dev/shm") {
    DaemonOptions o;
    o.host_bytes = 1ull << 50;
    CHECK_THROWS_WITH(Daemon(o), Catch::Contains("does not fit /dev/shm"));
  }
  SECTION("an unknown key") {
    DaemonOptions o;
    o.extra_toml = "[[namespace]]\nprefix = \"\"\ncodc = \"nf4\"\n";
    CHECK_THROWS_WITH(Daemon(o), Catch::Contains("unknown key") && Catch::Contains("codc"));
  }
  SECTION("an unknown socket group, at start and in --check-config") {
    DaemonOptions o;
    o.extra_toml = "[access]\nsocket_group = \"no-such-group-kvtier\"\n";
    CHECK_THROWS_WITH(Daemon(o), Catch::Contains("access.socket_group") &&
                                     Catch::Contains("no-such-group-kvtier") &&
                                     Catch::Contains("line"));
    const auto file = std::filesystem::temp_directory_path() /
                      ("kvtier-group-" + std::to_string(::getpid()) + ".toml");
    std::ofstream(file) << o.extra_toml;
    Run r = run_kvtierd("--check-config --config " + file.string());
    std::filesystem::remove(file);
    CHECK(WEXITSTATUS(r.rc) == 78);
    CHECK_THAT(r.out, Catch::Contains("access.socket_group") && Catch::Contains("line 2"));
  }
}

TEST_CASE("a second start with the same config is refused and leaves the running arena alone") {
  // Regression (issue 14, defect 2): the refused start used to unlink and recreate
  // /dev/shm/<prefix>-host-0 before noticing the live socket, and removed it on exit.
  Daemon d;
  auto c = Client::connect(d.socket()).value();
  const std::string shm = host_shm(*c);
  const ino_t before = inode_of(shm);
  REQUIRE(before != 0);
  Run r = run_kvtierd("--config " + (d.dir() / "kvtier.toml").string());
  CHECK(r.rc != 0);
  CHECK_THAT(r.out, Catch::Contains("daemon.shm_prefix") &&
                        Catch::Contains("pid " + std::to_string(d.pid())));
  CHECK(inode_of(shm) == before);
  serves_its_own_bytes(d, 8);
}

TEST_CASE("two daemons cannot share a shm_prefix, nor a socket") {
  // Regression (issue 14, defect 3): a second daemon with the same prefix on another socket
  // started, and the first one's new clients mapped the second one's arena (wrong bytes).
  Daemon a;
  DaemonOptions same_prefix;
  same_prefix.shm_prefix = a.shm_prefix();
  CHECK_THROWS_WITH(Daemon(same_prefix), Catch::Contains("daemon.shm_prefix") &&
                                             Catch::Contains("pid " + std::to_string(a.pid())));
  serves_its_own_bytes(a, 8);

  // Same socket, another prefix: refused, naming the socket key and the holder.
  std::ifstream in(a.dir() / "kvtier.toml");
  std::string toml((std::istreambuf_iterator<char>(in)), {});
  const std::string from = "shm_prefix = \"" + a.shm_prefix() + "\"";
  REQUIRE(toml.find(from) != std::string::npos);
  toml.replace(toml.find(from), from.size(), "shm_prefix = \"" + a.shm_prefix() + "-other\"");
  const auto other = a.dir() / "other.toml";
  std::ofstream(other) << toml;
  Run r = run_kvtierd("--config " + other.string());
  CHECK(r.rc != 0);
  CHECK_THAT(r.out,
             Catch::Contains("daemon.socket") && Catch::Contains("pid " + std::to_string(a.pid())));
  serves_its_own_bytes(a, 12);
}

TEST_CASE("two daemons cannot share a state directory") {
  // The disk tier's region files and LMDB index take one writer.
  Daemon a;
  std::ifstream in(a.dir() / "kvtier.toml");
  std::string toml((std::istreambuf_iterator<char>(in)), {});
  for (const std::string key : {"shm_prefix = \"", "socket = \""}) {
    const auto at = toml.find(key);
    REQUIRE(at != std::string::npos);
    toml.insert(toml.find('"', at + key.size()), "-other");
  }
  const auto other = a.dir() / "other.toml";
  std::ofstream(other) << toml;
  Run r = run_kvtierd("--config " + other.string());
  CHECK(r.rc != 0);
  CHECK_THAT(r.out, Catch::Contains("daemon.state_dir") &&
                        Catch::Contains("pid " + std::to_string(a.pid())));
  serves_its_own_bytes(a, 8);
}

TEST_CASE("clients map the arena the daemon holds open, even when its name is gone") {
  Daemon d;
  auto c = Client::connect(d.socket()).value();
  const std::string shm = host_shm(*c);
  REQUIRE(std::filesystem::remove(shm));
  // Another object under the same name must not be what new clients map.
  { std::ofstream(shm) << std::string(4096, 'x'); }
  serves_its_own_bytes(d, 8);
  auto health = nlohmann::json::parse(c->health_json().value());
  CHECK(health["tiers"]["host"]["shm_name"] == "replaced or removed");
  std::filesystem::remove(shm);
}

TEST_CASE("a restart after SIGKILL reclaims the name claims") {
  Daemon d;
  d.kill9();
  d.restart();
  serves_its_own_bytes(d, 8);
}
