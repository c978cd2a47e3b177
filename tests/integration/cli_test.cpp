// kvtierctl against a real daemon: tables, --json, eviction that skips leased blocks, exit codes.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/ctl.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;

namespace {

using Run = kvtier::testing::CtlRun;
using kvtier::testing::ctl;

// The whitespace-separated fields of the first line of out that starts with prefix.
std::vector<std::string> row(const std::string& out, const std::string& prefix) {
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(prefix, 0) != 0) continue;
    std::istringstream in(line);
    std::vector<std::string> fields;
    for (std::string f; in >> f;) fields.push_back(f);
    return fields;
  }
  return {};
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
  auto table = ctl(s + "clients");
  REQUIRE(table.code == 0);
  CHECK_THAT(table.out, Catch::Contains("TRANSPORT") && Catch::Contains("socket"));

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

TEST_CASE("kvtierctl shows searches, fusion state and the semantic index") {
  Daemon d;  // index.enabled defaults to true
  const std::string s = "-s " + d.socket() + " ";
  auto c = Client::connect(d.socket()).value();
  const BlockKey k = chain_keys("mm/vlm", std::vector<uint32_t>(16, 7), 16)[0];
  kvtier::testing::KvBlock b(k, 16);
  REQUIRE(c->put("mm/vlm", k, b.tensors).is_ok());
  std::vector<uint16_t> out(8 * 64, 0x3c00);
  std::vector<TensorIn> fusion = {TensorIn{"fusion_output", DType::kF16, {8, 64}, out.data()}};
  REQUIRE(c->put_fusion("mm/vlm", k, fusion).is_ok());
  std::vector<float> v(64, 0.f);
  v[3] = 1.f;
  std::vector<ChunkEmbeddings> e = {{k, {{"vision", v}}}};
  REQUIRE(c->add_embeddings("mm/vlm", e).is_ok());

  std::string query = "vision=0";  // v as kvtierctl search takes it
  for (size_t i = 1; i < v.size(); ++i) query += v[i] ? ",1" : ",0";
  auto found = ctl(s + "search -n mm/vlm -q " + query + " -t vision=0.9");
  CHECK(found.code == 0);
  CHECK_THAT(found.out, Catch::Contains(k.hex()) && Catch::Contains("1.0000"));

  auto stats = ctl(s + "stats");
  REQUIRE(stats.code == 0);
  INFO(stats.out);
  CHECK_THAT(stats.out, Catch::Contains("searches 1 (hit rate 100.0%)") &&
                            Catch::Contains("fusion state: host ") &&
                            !Catch::Contains("fusion state: host 0 B"));
  CHECK_THAT(stats.out, Catch::Contains("NAMESPACE") && Catch::Contains("MEAN us"));
  // NAMESPACE MODALITY TYPE DIM VECTORS DEAD SEARCHES HIT% MEAN-us
  auto r = row(stats.out, "mm/vlm");
  REQUIRE(r.size() == 9);
  CHECK(r[1] == "vision");
  CHECK(r[2] == "IDMap2,Flat");
  CHECK(r[3] == "64");
  CHECK(r[4] == "1");
  CHECK(r[5] == "0");
  CHECK(r[6] == "1");
  CHECK(r[7] == "100.0");

  auto ls = ctl(s + "ls --fusion");
  CHECK(ls.code == 0);
  CHECK_THAT(ls.out, Catch::Contains(k.hex()) && Catch::Contains("fusion_output:f16[8,64]"));
}

TEST_CASE("kvtierctl stats prints no index table without the index") {
  kvtier::testing::DaemonOptions o;
  o.extra_toml = "[index]\nenabled = false\n";
  Daemon d(o);
  auto stats = ctl("-s " + d.socket() + " stats");
  REQUIRE(stats.code == 0);
  INFO(stats.out);
  CHECK(!nlohmann::json::parse(ctl("-s " + d.socket() + " stats --json").out).contains("index"));
  CHECK_THAT(stats.out, Catch::Contains("searches: index off"));
  CHECK_THAT(stats.out, !Catch::Contains("semantic index") && !Catch::Contains("MODALITY"));
}

TEST_CASE("kvtierctl events replays and prints the daemon's KV events") {
  const auto base =
      std::filesystem::temp_directory_path() / ("kvtier-ev-" + std::to_string(::getpid()));
  kvtier::testing::DaemonOptions o;
  o.extra_toml = "[events]\nendpoint = \"ipc://" + base.string() +
                 ".pub\"\nreplay_endpoint = \"ipc://" + base.string() + ".replay\"\nbatch_ms = 1\n";
  Daemon d(o);
  const std::string s = "-s " + d.socket() + " ";
  auto connected = Client::connect(d.socket());
  INFO(connected.status().to_string());
  REQUIRE(connected);
  auto& c = *connected;
  auto keys = chain_keys("ev/model", std::vector<uint32_t>(32, 5), 16);
  for (const auto& k : keys) {
    kvtier::testing::KvBlock b(k, 16);
    REQUIRE(c->put("ev/model", k, b.tensors).is_ok());
  }
  REQUIRE(c->remove("ev/model", std::span(keys).first(1)));
  REQUIRE(ctl(s + "evict --all").code == 0);
  ::usleep(200 * 1000);  // batch_ms: every event has been published

  // At start AllBlocksCleared (seq 0), then what this test did, replayed from 0.
  Run r = ctl(s + "events --json --from 0 --count 5");
  REQUIRE(r.code == 0);
  std::vector<nlohmann::json> ev;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) ev.push_back(nlohmann::json::parse(line));
  REQUIRE(ev.size() == 5);
  CHECK(ev[0]["type"] == "AllBlocksCleared");
  CHECK(ev[0]["seq"] == 0);
  for (int i : {1, 2}) {
    CHECK(ev[i]["type"] == "BlockStored");
    CHECK(ev[i]["medium"] == "CPU");
    CHECK(ev[i]["namespace"] == "ev/model");
    CHECK(ev[i]["block_hashes"] == nlohmann::json::array({keys[i - 1].hex()}));
  }
  CHECK(ev[3]["type"] == "BlockRemoved");
  CHECK(ev[3]["block_hashes"] == nlohmann::json::array({keys[0].hex()}));
  CHECK(ev[4]["type"] == "AllBlocksCleared");

  Run text = ctl(s + "events --from 0 --count 2");
  REQUIRE(text.code == 0);
  CHECK(text.out.rfind("0 AllBlocksCleared\n", 0) == 0);
  CHECK(text.out.find("BlockStored CPU ev/model " + keys[0].hex()) != std::string::npos);

  auto stats = nlohmann::json::parse(ctl(s + "stats --json").out);
  CHECK(stats["events"]["published"] == 5);
  CHECK(stats["events"]["replays"] == 2);
}
