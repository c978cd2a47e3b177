// Pins against a real daemon (docs/operations.md, "Pins"): eviction under pressure never takes
// a pinned block, the quota refuses the pin that exceeds it (all or nothing), TTL expiry,
// pins outlive the client that made them and, in a durable namespace, a restart; kvtierctl.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/ctl.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;
using kvtier::testing::KvBlock;

namespace {

// 1024 tokens: two fp16 tensors of 256 KiB, a 512 KiB block; a 16 MiB arena holds ~30.
constexpr uint64_t kTokens = 1024;
constexpr uint64_t kBlockBytes = kTokens * 128 * 2 * 2;

// A 16 MiB host tier, no disk (an evicted block is gone), lossless blocks.
DaemonOptions small_host(const std::string& extra = "") {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  o.staging_bytes = 4ull << 20;
  o.disk = false;
  o.extra_toml = extra;
  return o;
}

std::vector<BlockKey> put_blocks(Client& c, const std::string& ns, uint32_t n, uint32_t salt) {
  auto keys = chain_keys(ns, std::vector<uint32_t>(16 * n, salt), 16);
  for (const auto& k : keys) {
    KvBlock b(k, kTokens);
    REQUIRE(c.put(ns, k, b.tensors).is_ok());
  }
  return keys;
}

// Puts `n` blocks of another namespace: several times what the 16 MiB arena holds.  S3-FIFO
// lets a scan of one-hit blocks through its small queue without touching the main queue, so
// to push out blocks that reached main (a block hit while pinned is promoted there when its
// pin goes), `hit` reads each pressure block once after its put: they are promoted too, and
// main evicts its oldest.
void pressure(Client& c, uint32_t n = 96, uint32_t salt = 7, bool hit = false) {
  const std::string ns = "pins/pressure";
  for (const auto& k : chain_keys(ns, std::vector<uint32_t>(16 * n, salt), 16)) {
    KvBlock b(k, kTokens);
    REQUIRE(c.put(ns, k, b.tensors).is_ok());
    if (hit) REQUIRE(c.get(ns, std::span(&k, 1)).is_ok());
  }
}

// How many of `keys` are cached with the bytes they were put with.
size_t intact(Client& c, const std::string& ns, const std::vector<BlockKey>& keys) {
  auto lease = c.get(ns, keys);
  REQUIRE(lease.is_ok());
  size_t n = 0;
  for (const auto& b : lease->blocks()) n += kvtier::testing::check_kv_block(b, kTokens);
  return n;
}

nlohmann::json pinned_list(Client& c, const std::string& ns = "") {
  auto doc = c.list_json(ns, 0, false, true);
  REQUIRE(doc.is_ok());
  return nlohmann::json::parse(*doc);
}

using Run = kvtier::testing::CtlRun;
using kvtier::testing::ctl;

}  // namespace

TEST_CASE("pins: eviction under pressure never takes a pinned block") {
  Daemon d(small_host());
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/hot";
  auto hot = put_blocks(*c, ns, 4, 1);
  auto cold = put_blocks(*c, ns, 4, 2);
  auto r = c->pin(ns, hot);
  REQUIRE(r.is_ok());
  CHECK(r->pinned == 4);
  CHECK(r->refreshed == 0);
  CHECK(r->pinned_bytes == 4 * kBlockBytes);
  CHECK(r->quota_bytes == (16ull << 20) / 4);  // "auto": a quarter of the arena

  pressure(*c);  // ~3x the arena
  CHECK(intact(*c, ns, hot) == 4);
  CHECK(intact(*c, ns, cold) == 0);  // the unpinned ones went
  auto list = pinned_list(*c);
  REQUIRE(list.size() == 4);
  for (const auto& b : list) {
    CHECK(b.at("pinned") == true);
    CHECK(b.at("tier") == "host");
    CHECK(b.at("pin_expires_unix_ms") == 0);
  }

  // Metrics: gauges and counters.
  auto stats = nlohmann::json::parse(c->stats_json().value()).dump();
  CHECK_THAT(stats, Catch::Contains("\"pinned_blocks\":4"));
  CHECK_THAT(stats, Catch::Contains("\"pins\":4"));

  SECTION("unpin makes them evictable again") {
    auto u = c->unpin(ns, hot);
    REQUIRE(u.is_ok());
    CHECK(*u == 4);
    CHECK(c->unpin(ns, hot).value() == 0);  // not pinned: not an error
    pressure(*c, 96, 8, true);
    CHECK(intact(*c, ns, hot) == 0);
    CHECK(pinned_list(*c).empty());
  }
  SECTION("an explicit remove takes a pinned block, and its pin") {
    auto rm = c->remove(ns, std::span(hot.data(), 1));
    REQUIRE(rm.is_ok());
    CHECK(rm->removed == 1);
    CHECK(rm->deferred == 0);
    CHECK(intact(*c, ns, {hot[0]}) == 0);
    CHECK(pinned_list(*c).size() == 3);
  }
  SECTION("an admin eviction skips pinned blocks") {
    auto ev = c->evict(ns, {}, false, TierSel::kHost);
    REQUIRE(ev.is_ok());
    CHECK(ev->skipped_leased == 4);
    CHECK(intact(*c, ns, hot) == 4);
  }
}

TEST_CASE("pins: the quota refuses the pin that exceeds it, and pins nothing of it") {
  Daemon d(
      small_host("[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ndisk = \"off\"\n"
                 "pin_bytes = \"2MiB\"\n"));
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/quota";
  auto keys = put_blocks(*c, ns, 6, 3);
  REQUIRE(c->pin(ns, std::span(keys.data(), 3)).is_ok());  // 1.5 MiB of 2
  auto over = c->pin(ns, std::span(keys.data() + 3, 2));   // +1 MiB
  REQUIRE_FALSE(over.is_ok());
  CHECK(over.status().code() == Errc::kNoSpace);
  CHECK_THAT(over.status().message(), Catch::Contains("pin_bytes") && Catch::Contains(ns));
  CHECK(pinned_list(*c).size() == 3);  // neither of the two
  // One more fits; refreshing pinned ones costs nothing.
  auto ok = c->pin(ns, std::span(keys.data(), 4));
  REQUIRE(ok.is_ok());
  CHECK(ok->pinned == 4);
  CHECK(ok->refreshed == 3);
  CHECK(ok->pinned_bytes == 4 * kBlockBytes);
  CHECK(ok->quota_bytes == 2ull << 20);
  auto stats = nlohmann::json::parse(c->stats_json().value()).dump();
  CHECK_THAT(stats, Catch::Contains("\"pin_refusals\":1"));
}

TEST_CASE("pins: a block that is not cached cannot be pinned (all or nothing)") {
  Daemon d(small_host());
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/missing";
  auto keys = put_blocks(*c, ns, 2, 4);
  BlockKey missing = keys[0];
  missing.lo ^= 1;
  std::vector<BlockKey> ask = {keys[0], missing, keys[1]};
  auto r = c->pin(ns, ask);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == Errc::kNotFound);
  CHECK_THAT(r.status().message(), Catch::Contains(missing.hex()));
  CHECK(pinned_list(*c).empty());
  // The leases the pin took for a moment are gone too.
  auto clients = nlohmann::json::parse(c->clients_json().value());
  for (const auto& s : clients) CHECK(s.at("leases") == 0);
}

TEST_CASE("pins: a TTL ends the pin, and pressure evicts the block") {
  Daemon d(small_host());
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/ttl";
  auto keys = put_blocks(*c, ns, 2, 5);
  REQUIRE(c->pin(ns, keys, uint64_t{400}).is_ok());
  auto list = pinned_list(*c);
  REQUIRE(list.size() == 2);
  CHECK(list[0].at("pin_expires_unix_ms").get<uint64_t>() > 0);
  // Refreshing restarts the TTL.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  auto again = c->pin(ns, keys, uint64_t{400});
  REQUIRE(again.is_ok());
  CHECK(again->refreshed == 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  CHECK(pinned_list(*c).size() == 2);  // 500 ms after the first pin, 250 after the refresh
  std::this_thread::sleep_for(std::chrono::milliseconds(1600));  // the sweep runs every second
  CHECK(pinned_list(*c).empty());
  pressure(*c, 96, 7, true);
  CHECK(intact(*c, ns, keys) == 0);
  auto stats = nlohmann::json::parse(c->stats_json().value()).dump();
  CHECK_THAT(stats, Catch::Contains("\"pins_expired\":2"));
}

TEST_CASE("pins: an expired pin does not hold a put back") {
  Daemon d(small_host());
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/lazy";
  auto keys = put_blocks(*c, ns, 2, 6);
  REQUIRE(c->pin(ns, keys, uint64_t{1}).is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  pressure(*c, 96, 7, true);  // the puts drop the expired pins before they reserve
  CHECK(intact(*c, ns, keys) == 0);
}

TEST_CASE("pins: pins outlive the client that made them") {
  Daemon d(small_host());
  const std::string ns = "pins/orphan";
  std::vector<BlockKey> keys;
  {
    auto c = Client::connect(d.socket()).value();
    keys = put_blocks(*c, ns, 3, 9);
  }
  // A client that pins and is killed (SIGKILL: no goodbye).
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto c = Client::connect(d.socket());
    if (!c || !(*c)->pin(ns, keys).is_ok()) ::_exit(1);
    ::raise(SIGKILL);
    ::_exit(2);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  auto c = Client::connect(d.socket()).value();
  CHECK(pinned_list(*c).size() == 3);
  pressure(*c);
  CHECK(intact(*c, ns, keys) == 3);
}

TEST_CASE("pins: a durable namespace keeps its pins across a restart") {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  o.staging_bytes = 4ull << 20;
  o.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ndisk = \"off\"\n"
      "[[namespace]]\nprefix = \"durable/\"\ncodec = \"fp16\"\ndisk = \"persist\"\n";
  Daemon d(o);
  const std::string ns = "durable/pins";
  auto c = Client::connect(d.socket()).value();
  auto keys = put_blocks(*c, ns, 4, 10);
  REQUIRE(c->pin(ns, std::span(keys.data(), 2)).is_ok());
  REQUIRE(c->pin(ns, std::span(keys.data() + 2, 1), uint64_t{3600 * 1000}).is_ok());
  REQUIRE(c->pin(ns, std::span(keys.data() + 3, 1), uint64_t{1}).is_ok());  // expires at once
  // A volatile namespace's pin is not recorded.
  auto vol = put_blocks(*c, "volatile/pins", 1, 11);
  REQUIRE(c->pin("volatile/pins", vol).is_ok());
  c.reset();

  const auto file = d.state_dir() / "pins.json";
  REQUIRE(std::filesystem::exists(file));
  std::ifstream in(file);
  auto doc = nlohmann::json::parse(in);
  CHECK(doc.at("format") == "kvtier-pins");
  CHECK(doc.at("version") == 1);
  // Three pins that hold, and the one that expired unless a sweep rewrote the file already.
  CHECK(doc.at("pins").size() >= 3);
  for (const auto& p : doc.at("pins")) CHECK(p.at("namespace") == ns);

  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(d.stop() == 0);
  d.restart();
  c = Client::connect(d.socket()).value();
  auto list = pinned_list(*c);
  REQUIRE(list.size() == 3);  // the expired one is not restored, the volatile one is gone
  for (const auto& b : list) CHECK(b.at("namespace") == ns);
  pressure(*c);
  CHECK(intact(*c, ns, std::vector<BlockKey>(keys.begin(), keys.begin() + 3)) == 3);
  // The unpin is recorded too: after another restart the block is no longer pinned.
  CHECK(c->unpin(ns, std::span(keys.data(), 1)).value() == 1);
  c.reset();
  REQUIRE(d.stop() == 0);
  d.restart();
  c = Client::connect(d.socket()).value();
  CHECK(pinned_list(*c).size() == 2);
}

TEST_CASE("pins: a peer that may not write the namespace may not pin it") {
  Daemon d(
      small_host("[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ndisk = \"off\"\n"
                 "[[namespace]]\nprefix = \"locked/\"\nallow_uids = [4242]\n"));
  auto c = Client::connect(d.socket()).value();
  std::vector<BlockKey> keys = chain_keys("locked/x", std::vector<uint32_t>(16, 1), 16);
  auto r = c->pin("locked/x", keys);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == Errc::kPermissionDenied);
  CHECK(c->unpin("locked/x", keys).status().code() == Errc::kPermissionDenied);
}

TEST_CASE("pins: kvtierctl pin, unpin and ls --pinned") {
  Daemon d(small_host());
  const std::string s = "-s " + d.socket() + " ";
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/cli";
  auto keys = put_blocks(*c, ns, 3, 12);
  auto pin = ctl(s + "pin -n " + ns + " -k " + keys[0].hex() + " -k " + keys[1].hex());
  CHECK(pin.code == 0);
  CHECK_THAT(pin.out, Catch::Contains("pinned 2 blocks"));
  auto ls = ctl(s + "ls --pinned");
  CHECK(ls.code == 0);
  CHECK_THAT(ls.out, Catch::Contains(keys[0].hex()) && Catch::Contains(keys[1].hex()) &&
                         Catch::Contains("PIN") && Catch::Contains("yes"));
  CHECK_THAT(ls.out, !Catch::Contains(keys[2].hex()));
  auto js = ctl(s + "ls --pinned --json");
  CHECK(nlohmann::json::parse(js.out).size() == 2);
  auto ttl = ctl(s + "pin --json -n " + ns + " --ttl-ms 60000 -k " + keys[0].hex());
  CHECK(ttl.code == 0);
  CHECK(nlohmann::json::parse(ttl.out).at("refreshed") == 1);
  BlockKey missing = keys[2];
  missing.hi ^= 1;
  auto miss = ctl(s + "pin -n " + ns + " -k " + missing.hex());
  CHECK(miss.code == 1);
  CHECK_THAT(miss.out, Catch::Contains("not cached"));
  CHECK(ctl(s + "pin -n " + ns + " -k nothex").code == 2);
  auto unpin = ctl(s + "unpin -n " + ns + " -k " + keys[0].hex() + " -k " + keys[2].hex());
  CHECK(unpin.code == 0);
  CHECK_THAT(unpin.out, Catch::Contains("unpinned 1 of 2"));
  CHECK(pinned_list(*c).size() == 1);
}

TEST_CASE("pins: a block pinned in the GPU tier stays there under pressure") {
  DaemonOptions o;
  o.gpu_backend = "emulation";
  o.gpu_bytes = 8ull << 20;
  o.host_bytes = 32ull << 20;
  o.staging_bytes = 4ull << 20;
  o.disk = false;
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  const std::string ns = "pins/gpu";
  auto keys = put_blocks(*c, ns, 4, 13);  // fp16: they land in the GPU tier
  PinOptions on_gpu;
  on_gpu.gpu = true;
  auto r = c->pin(ns, std::span(keys.data(), 2), on_gpu);
  REQUIRE(r.is_ok());
  CHECK(r->pinned == 2);
  pressure(*c, 40, 14);  // 20 MiB through an 8 MiB pool: evictions copy blocks down
  auto list = pinned_list(*c);
  REQUIRE(list.size() == 2);
  for (const auto& b : list) CHECK(b.at("tier") == "gpu0");
  GetOptions g;
  g.gpu = true;
  auto lease = c->get(ns, std::span(keys.data(), 2), g).value();
  REQUIRE(lease.found() == 2);
  for (const auto& b : lease.blocks()) {
    CHECK(b.on_gpu);
    const TensorView* k = b.tensor("k");
    REQUIRE(k != nullptr);
    REQUIRE(k->host_accessible);  // the emulation's device memory is shared host memory
    const auto want = kvtier::testing::pattern(b.key, k->bytes);
    CHECK(std::memcmp(k->data, want.data(), want.size()) == 0);
  }
  // A pin asking for a GPU the daemon does not have fails clearly.
  on_gpu.device = 5;
  CHECK(c->pin(ns, std::span(keys.data(), 1), on_gpu).status().code() == Errc::kInvalidArgument);
}

TEST_CASE(
    "pins: a durable pinned block whose payload is corrupt is dropped at start, never "
    "served") {
  DaemonOptions o;
  o.host_bytes = 16ull << 20;
  o.staging_bytes = 4ull << 20;
  o.disk_backend = "threads";
  o.extra_toml =
      "[[namespace]]\nprefix = \"\"\ncodec = \"fp16\"\ndisk = \"persist\"\n"
      "compress = false\n";
  Daemon d(o);
  const std::string ns = "durable/corrupt";
  std::vector<BlockKey> keys;
  {
    auto c = Client::connect(d.socket()).value();
    keys = put_blocks(*c, ns, 4, 15);
    REQUIRE(c->pin(ns, keys).is_ok());
  }
  REQUIRE(d.stop() == 0);
  // Flip bytes inside the first payload of every region file (past its 4 KiB header; the
  // blocks are 512 KiB each, stored as they are).
  int flipped = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(d.state_dir() / "disk")) {
    if (!f.is_regular_file() || f.path().extension() != ".kvr") continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(100 << 10);
    io.write("\xde\xad\xbe\xef", 4);
    ++flipped;
  }
  REQUIRE(flipped > 0);
  d.restart();
  auto c = Client::connect(d.socket()).value();
  const size_t pinned = pinned_list(*c).size();
  CHECK(pinned < keys.size());
  CHECK(pinned > 0);
  auto lease = c->get(ns, keys).value();
  size_t found = 0;
  for (const auto& b : lease.blocks()) {
    if (!b.found()) continue;
    CHECK(kvtier::testing::check_kv_block(b, kTokens));  // never corrupt data
    ++found;
  }
  CHECK(found == pinned);
  // The pin file now lists only what holds.
  std::ifstream in(d.state_dir() / "pins.json");
  CHECK(nlohmann::json::parse(in).at("pins").size() == pinned);
}
