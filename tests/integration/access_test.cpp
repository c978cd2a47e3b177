// Access rules, socket permissions, shutdown and the process-wide arena mapping.
#include <catch2/catch.hpp>

#include <sys/stat.h>

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
}

TEST_CASE("a second daemon on a live socket refuses to start") {
  Daemon d;
  std::string cmd = kvtier::testing::kvtierd_path() + " --socket " + d.socket() + " --config " +
                    (d.dir() / "kvtier.toml").string() + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int rc = ::pclose(p);
  CHECK(rc != 0);
  CHECK_THAT(out, Catch::Contains("another kvtierd is serving"));
  auto c = Client::connect(d.socket());
  CHECK(c.is_ok());
}
