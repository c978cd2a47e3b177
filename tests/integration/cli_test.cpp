// kvtierctl against a real daemon: tables, --json, eviction that skips leased blocks, exit codes.
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;

namespace {

struct Run {
  int code;
  std::string out;
};

Run ctl(const std::string& args) {
  std::string cmd = std::string(KVTIER_BINARY_DIR) + "/cli/kvtierctl " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  Run r{0, {}};
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) r.out.append(buf, n);
  int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

TEST_CASE("kvtierctl stats, health, ls, clients, config, evict") {
  Daemon d;
  const std::string s = "-s " + d.socket() + " ";
  auto c = Client::connect(d.socket()).value();
  auto keys = chain_keys("tenant/model", std::vector<uint32_t>(64, 3), 16);
  for (const auto& k : keys) {
    kvtier::testing::KvBlock b(k, 16);
    REQUIRE(c->put("tenant/model", k, b.tensors).is_ok());
  }
  auto lease = c->get("tenant/model", std::span(keys).first(1)).value();

  auto stats = ctl(s + "stats");
  CHECK(stats.code == 0);
  CHECK_THAT(stats.out, Catch::Contains("host") && Catch::Contains("BLOCKS"));
  auto js = ctl(s + "stats --json");
  REQUIRE(js.code == 0);
  CHECK(nlohmann::json::parse(js.out)["tiers"]["host"]["blocks"] == 4);

  auto health = ctl(s + "health");
  CHECK(health.code == 0);
  CHECK_THAT(health.out, Catch::Contains("serving"));

  auto ls = ctl(s + "ls --namespace tenant/model");
  CHECK(ls.code == 0);
  CHECK_THAT(ls.out, Catch::Contains(keys[0].hex()) && Catch::Contains("k:f16[16,128]/raw"));

  auto clients = ctl(s + "clients --json");
  REQUIRE(clients.code == 0);
  auto cj = nlohmann::json::parse(clients.out);
  bool saw_lease = false;
  for (const auto& e : cj) saw_lease |= e["leases"] == 1;
  CHECK(saw_lease);

  auto config = ctl(s + "config");
  CHECK(config.code == 0);
  CHECK_THAT(config.out, Catch::Contains("[host]") && Catch::Contains(d.socket()));

  auto one = ctl(s + "evict --namespace tenant/model --key " + keys[1].hex());
  CHECK(one.code == 0);
  CHECK_THAT(one.out, Catch::Contains("evicted 1 blocks"));

  auto all = ctl(s + "evict --all");
  CHECK(all.code == 0);
  CHECK_THAT(all.out, Catch::Contains("evicted 2 blocks") && Catch::Contains("skipped 1 leased"));
  CHECK(c->lookup("tenant/model", std::span(keys).first(1)).value() == 1);  // the leased one stays
}

TEST_CASE("kvtierctl exit codes follow the usual conventions") {
  CHECK(ctl("-s /nonexistent/kvtier.sock stats").code == 69);
  CHECK(ctl("frobnicate").code != 0);
  Daemon d;
  const std::string s = "-s " + d.socket() + " ";
  auto bad = ctl(s + "evict --namespace ns --key nothex");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.out, Catch::Contains("32 hex digits"));
  CHECK(ctl(s + "evict").code == 2);
}

TEST_CASE("kvtierctl reports permission denied with EX_NOPERM") {
  kvtier::testing::DaemonOptions o;
  o.extra_toml = "[access]\nadmin_uids = [12345]\n";
  Daemon d(o);
  auto r = ctl("-s " + d.socket() + " clients");
  CHECK(r.code == 77);
  CHECK_THAT(r.out, Catch::Contains("permission_denied"));
  CHECK(ctl("-s " + d.socket() + " stats").code == 0);
}

TEST_CASE("kvtierctl shows and evicts the GPU tier (host emulation)") {
  kvtier::testing::DaemonOptions o;
  o.gpu_backend = "emulation";
  Daemon d(o);
  const std::string s = "-s " + d.socket() + " ";
  auto c = Client::connect(d.socket()).value();
  auto keys = chain_keys("gpu/model", std::vector<uint32_t>(32, 5), 16);
  for (const auto& k : keys) {
    kvtier::testing::KvBlock b(k, 16);  // fp16: lands in the GPU tier
    REQUIRE(c->put("gpu/model", k, b.tensors).is_ok());
  }
  auto stats = ctl(s + "stats");
  CHECK(stats.code == 0);
  CHECK_THAT(stats.out, Catch::Contains("gpu0") && Catch::Contains("gpu: puts 2"));
  auto health = ctl(s + "health");
  CHECK_THAT(health.out, Catch::Contains("tier gpu") && Catch::Contains("emulation"));
  auto ls = ctl(s + "ls --namespace gpu/model");
  CHECK_THAT(ls.out, Catch::Contains("gpu0"));
  auto ev = ctl(s + "evict --namespace gpu/model --tier gpu");
  CHECK(ev.code == 0);
  CHECK_THAT(ev.out, Catch::Contains("evicted 2 blocks") && Catch::Contains("gpu: evicted 2"));
  CHECK(c->lookup("gpu/model", keys).value() == 0);
}
