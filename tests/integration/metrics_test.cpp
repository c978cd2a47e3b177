// GET /metrics of a real kvtierd: values that move with the requests made, agreement with
// `kvtierctl stats --json` (one visitor feeds both), the exposition checked by promtool and by
// prometheus_client's parser, the endpoint's limits, and the stats JSON keeping its keys.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;

namespace {

// A loopback port nothing listens on right now (the daemon binds it moments later).
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{20, 0};  // a test never hangs on a silent endpoint
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

struct HttpReply {
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
};

// Sends `request` verbatim on a new connection and reads until the daemon closes it.
HttpReply http(uint16_t port, const std::string& request) {
  int fd = connect_to(port);
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the daemon may close on an oversized request before reading it all
    sent += size_t(n);
  }
  std::string raw;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, size_t(n));
  ::close(fd);
  HttpReply r;
  const size_t end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(9, 3));
  r.head = raw.substr(0, end);
  r.body = raw.substr(end + 4);
  return r;
}

HttpReply get(uint16_t port, const std::string& target = "/metrics") {
  return http(port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

// The value of one series ("name" or "name{labels}" exactly as rendered), if present.
std::optional<double> sample(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

double value(const std::string& text, const std::string& series) {
  auto v = sample(text, series);
  INFO(series);
  REQUIRE(v.has_value());
  return *v;
}

struct Run {
  int code = -1;
  std::string out;
};

Run run(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  Run r;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::filesystem::path write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("kvtier-metrics-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(path) << text;
  return path;
}

// fp16 bits of N(0, 1) samples (normal range; finite, as NF4 requires).
std::vector<uint16_t> normal_half(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint16_t> out;
  for (size_t i = 0; i < n; ++i) {
    const float f = dist(rng);
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const int32_t exp = int32_t((x >> 23) & 0xff) - 127 + 15;
    out.push_back(static_cast<uint16_t>(
        exp <= 0 ? sign : sign | (uint32_t(exp) << 10) | ((x & 0x7fffff) >> 13)));
  }
  return out;
}

float half_value(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  const uint32_t x = exp == 0 ? sign : sign | ((exp - 15 + 127) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

std::string listen_toml(uint16_t port, double nf4_sample) {
  return "[metrics]\nlisten = \"127.0.0.1:" + std::to_string(port) +
         "\"\nnf4_error_sample = " + std::to_string(nf4_sample) + "\n";
}

}  // namespace

TEST_CASE("GET /metrics: values move with requests, agree with stats, and parse") {
  const uint16_t port = free_port();
  DaemonOptions o;
  o.codec = "nf4";
  o.extra_toml = listen_toml(port, 1.0);  // measure the NF4 error of every seal
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();

  const std::string ns = "tenant/model";
  const uint64_t tokens = 64;
  constexpr int kPuts = 5, kGets = 3, kLookups = 7;
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint16_t>> k_half, v_half;
  for (int i = 0; i < kPuts; ++i) {
    keys.push_back(BlockKey{uint64_t(100 + i), 7});
    k_half.push_back(normal_half(tokens * 128, 2 * i + 1));
    v_half.push_back(normal_half(tokens * 128, 2 * i + 2));
    std::vector<TensorIn> in = {TensorIn{"k", DType::kF16, {tokens, 128}, k_half[i].data()},
                                TensorIn{"v", DType::kF16, {tokens, 128}, v_half[i].data()}};
    REQUIRE(c->put(ns, keys.back(), in).is_ok());
  }
  // The NF4 error the daemon should have measured: decode what it stored, as a client does.
  double max_err = 0, sum_err = 0;
  uint64_t values = 0;
  for (int g = 0; g < kGets; ++g) {
    auto lease = c->get(ns, std::span(keys).subspan(g, 1)).value();
    if (g != 0) continue;
    const LeasedBlock& b = lease.block(0);
    for (const auto& [name, src] : {std::pair{"k", &k_half[0]}, std::pair{"v", &v_half[0]}}) {
      const TensorView* t = b.tensor(name);
      REQUIRE(t != nullptr);
      REQUIRE(t->codec == Codec::kNf4);
      std::vector<float> dec(tokens * 128);
      REQUIRE(decode(*t, DType::kF32, std::as_writable_bytes(std::span(dec))).is_ok());
      for (size_t i = 0; i < dec.size(); ++i) {
        const double e = std::fabs(double(dec[i]) - double(half_value((*src)[i])));
        max_err = std::max(max_err, e);
        sum_err += e;
      }
      values += dec.size();
    }
  }
  // The daemon counts the lookups it answers (not those a client reads from the index).
  LookupOptions from_daemon;
  from_daemon.source = LookupSource::kDaemon;
  for (int l = 0; l < kLookups; ++l) CHECK(c->lookup(ns, keys, from_daemon).value() == kPuts);
  const std::vector<ChunkEmbeddings> emb = {
      ChunkEmbeddings{keys[0], {ModalityVector{"vision", std::vector<float>(8, 0.5f)}}}};
  REQUIRE(c->add_embeddings(ns, emb).is_ok());
  const std::vector<SearchQuery> query = {SearchQuery{"vision", std::vector<float>(8, 1.0f)}};
  CHECK(c->search(ns, query, 3).value().hits.size() == 1);
  // A refused NF4 put (NaN) is counted by the codec.
  std::vector<uint16_t> nan = k_half[0];
  nan[5] = 0x7e00;
  std::vector<TensorIn> bad = {TensorIn{"k", DType::kF16, {tokens, 128}, nan.data()}};
  CHECK(c->put(ns, BlockKey{1, 1}, bad).code() == Errc::kInvalidArgument);

  const HttpReply r = get(port);
  REQUIRE(r.status == 200);
  CHECK_THAT(r.head, Catch::Contains("Content-Type: text/plain; version=0.0.4"));
  const std::string& m = r.body;
  INFO(m.substr(0, 4000));

  SECTION("counters and gauges moved") {
    CHECK(value(m, "kvtier_puts_total") == kPuts);
    CHECK(value(m, "kvtier_gets_total") == kGets);
    CHECK(value(m, "kvtier_lookups_total") == kLookups);
    CHECK(value(m, "kvtier_lookup_keys_total") == kLookups * kPuts);
    CHECK(value(m, "kvtier_tier_used_bytes{tier=\"host\"}") > 0);
    CHECK(value(m, "kvtier_tier_blocks{tier=\"host\"}") == kPuts);
    CHECK(value(m, "kvtier_tier_compression_ratio{tier=\"host\"}") > 3.0);  // NF4 vs fp16
    CHECK(value(m, "kvtier_tier_capacity_bytes{tier=\"disk\"}") > 0);
    CHECK(value(m, "kvtier_sessions") == 1);
    CHECK(value(m, "kvtier_leases") == 0);
    CHECK(value(m, "kvtier_codec_tensors_total{codec=\"nf4\"}") == 2 * kPuts);
    CHECK(value(m, "kvtier_codec_input_bytes_total{codec=\"nf4\"}") ==
          2 * kPuts * tokens * 128 * 2);
    CHECK(value(m, "kvtier_codec_encode_failures_total") == 1);
    CHECK(value(m, "kvtier_codec_encode_seconds_total") > 0);
    const std::string mod = "{namespace=\"" + ns + "\",modality=\"vision\"}";
    CHECK(value(m, "kvtier_index_vectors" + mod) == 1);
    CHECK(value(m, "kvtier_index_dimensions" + mod) == 8);
    CHECK(value(m, "kvtier_index_searches_total" + mod) == 1);
    CHECK(value(m, "kvtier_index_search_hits_total" + mod) == 1);
    CHECK(value(m, "kvtier_searches_total") == 1);
  }

  SECTION("request latency histograms count every request, buckets cumulative") {
    const std::pair<const char*, int> timed[] = {
        {"lookup", kLookups}, {"get", kGets}, {"put_begin", kPuts + 1}, {"seal", kPuts + 1}};
    for (const auto& [req, n] : timed) {
      const std::string l = std::string("{request=\"") + req + "\"";
      CHECK(value(m, "kvtier_request_duration_seconds_count" + l + "}") == n);
      CHECK(value(m, "kvtier_request_duration_seconds_bucket" + l + ",le=\"+Inf\"}") == n);
      CHECK(value(m, "kvtier_request_duration_seconds_sum" + l + "}") > 0);
      CHECK(value(m, "kvtier_request_duration_seconds_bucket" + l + ",le=\"1e-06\"}") <=
            value(m, "kvtier_request_duration_seconds_bucket" + l + ",le=\"0.01\"}"));
    }
    CHECK(value(m, "kvtier_request_duration_seconds_count{request=\"search\"}") == 1);
    CHECK(value(m, "kvtier_request_duration_seconds_count{request=\"get_fusion\"}") == 0);
  }

  SECTION("NF4 error of every seal, per namespace, as the client's own decode finds it") {
    const std::string l = "{namespace=\"" + ns + "\"}";
    CHECK(value(m, "kvtier_nf4_sampled_tensors_total" + l) == 2 * kPuts);
    CHECK(value(m, "kvtier_nf4_sampled_values_total" + l) == 2 * kPuts * tokens * 128);
    // Over all five blocks the max is at least that of the first, and the mean is near it
    // (N(0,1) data in blocks of 64: about 0.073).
    CHECK(value(m, "kvtier_nf4_abs_error_max" + l) >= max_err);
    CHECK(value(m, "kvtier_nf4_abs_error_max" + l) < 1.0);
    CHECK(value(m, "kvtier_nf4_abs_error_mean" + l) ==
          Approx(sum_err / double(values)).epsilon(0.05));
    CHECK(value(m, "kvtier_nf4_abs_error_total" + l) ==
          Approx(value(m, "kvtier_nf4_abs_error_mean" + l) *
                 value(m, "kvtier_nf4_sampled_values_total" + l)));
  }

  SECTION("the same visitor feeds kvtierctl stats --json") {
    auto j = nlohmann::json::parse(c->stats_json().value());
    const std::string again = get(port).body;  // nothing changed in between
    CHECK(j["counters"]["puts"] == value(again, "kvtier_puts_total"));
    CHECK(j["tiers"]["host"]["used_bytes"] ==
          value(again, "kvtier_tier_used_bytes{tier=\"host\"}"));
    CHECK(j["tiers"]["disk"]["blocks"] == value(again, "kvtier_tier_blocks{tier=\"disk\"}"));
    CHECK(j["latency"]["lookup"]["count"] ==
          value(again, "kvtier_request_duration_seconds_count{request=\"lookup\"}"));
    CHECK(j["codec"]["nf4_tensors"] == 2 * kPuts);
    CHECK(j["nf4_error"][ns]["sampled_tensors"] == 2 * kPuts);
    CHECK(j["nf4_error"][ns]["abs_error_max"].get<double>() ==
          Approx(value(again, "kvtier_nf4_abs_error_max{namespace=\"" + ns + "\"}")));
  }

  SECTION("every family is in docs/operations.md; every name the dashboard uses is served") {
    std::ifstream ops(KVTIER_SOURCE_DIR "/docs/operations.md");
    const std::string doc((std::istreambuf_iterator<char>(ops)), {});
    std::set<std::string> families;
    std::istringstream lines(m);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind("# TYPE ", 0) == 0) families.insert(line.substr(7, line.find(' ', 7) - 7));
    CHECK(families.size() > 100);
    for (const auto& f : families) {
      INFO(f);
      CHECK(doc.find("| `" + f + "` |") != std::string::npos);
    }
    std::ifstream dash(KVTIER_SOURCE_DIR "/docs/grafana-kvtier.json");
    const std::string text((std::istreambuf_iterator<char>(dash)), {});
    REQUIRE_NOTHROW(nlohmann::json::parse(text));
    const std::regex name("kvtier_[a-z0-9_]+");
    size_t used = 0;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), name);
         it != std::sregex_iterator(); ++it) {
      std::string n = it->str();
      for (const char* suffix : {"_bucket", "_sum", "_count"})
        if (n.ends_with(suffix) && families.count(n.substr(0, n.size() - std::strlen(suffix))))
          n = n.substr(0, n.size() - std::strlen(suffix));
      ++used;
      INFO(n);
      CHECK(families.count(n) == 1);
    }
    CHECK(used > 30);
  }

  SECTION("promtool check metrics") {
    if (!std::filesystem::exists("/usr/bin/promtool")) {
      WARN("skipped: /usr/bin/promtool is absent (Debian package prometheus)");
      return;
    }
    const auto file = write_temp("promtool.txt", m);
    const Run check = run("/usr/bin/promtool check metrics < " + file.string());
    std::filesystem::remove(file);
    INFO(check.out);
    CHECK(check.code == 0);
    CHECK(check.out.find("error") == std::string::npos);
  }

  SECTION("prometheus_client's parser reads every family") {
    const auto file = write_temp("parse.txt", m);
    const Run parsed =
        run("/usr/bin/python3 " KVTIER_SOURCE_DIR "/tests/integration/parse_metrics.py " +
            file.string());
    std::filesystem::remove(file);
    INFO(parsed.out);
    REQUIRE(parsed.code == 0);
    const auto f = nlohmann::json::parse(parsed.out);
    CHECK(f["kvtier_request_duration_seconds"]["type"] == "histogram");
    CHECK(f["kvtier_request_duration_seconds"]["samples"]
           ["kvtier_request_duration_seconds_count{request=\"get\"}"] == kGets);
    CHECK(f["kvtier_puts"]["type"] == "counter");  // the parser strips _total from the family
    CHECK(f["kvtier_puts"]["samples"]["kvtier_puts_total"] == kPuts);
    CHECK(f["kvtier_tier_used_bytes"]["type"] == "gauge");
    CHECK(f["kvtier_tier_used_bytes"]["samples"].contains("kvtier_tier_used_bytes{tier=\"host\"}"));
    CHECK(f["kvtier_nf4_abs_error_max"]["samples"].size() == 1);
    // Every family of the text came through: one "# TYPE" line each.
    size_t families = 0;
    for (size_t at = m.find("# TYPE "); at != std::string::npos; at = m.find("# TYPE ", at + 1))
      ++families;
    CHECK(f.size() == families);
  }
}

TEST_CASE("GET /metrics: anything else is 404, bad requests 400, a dead scraper harms nothing") {
  const uint16_t port = free_port();
  DaemonOptions o;
  o.extra_toml = listen_toml(port, 0);
  Daemon d(o);
  // A scraper that connects and never says anything holds one connection, nothing else.
  const int idle = connect_to(port);
  const int half = connect_to(port);
  const std::string partial = "GET /metrics HTTP/1.1\r\nHost: x\r\n";  // never finished
  REQUIRE(::send(half, partial.data(), partial.size(), MSG_NOSIGNAL) == ssize_t(partial.size()));

  auto c = Client::connect(d.socket()).value();
  kvtier::testing::KvBlock b(BlockKey{1, 2}, 16);
  REQUIRE(c->put("ns", BlockKey{1, 2}, b.tensors).is_ok());
  CHECK(get(port).status == 200);

  CHECK(get(port, "/").status == 404);
  CHECK(get(port, "/metrics/x").status == 404);
  CHECK(get(port, "/metrics?name[]=x").status == 200);  // the query is ignored
  const HttpReply post = http(
      port,
      "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc");
  CHECK(post.status == 404);
  CHECK(http(port, "garbage\r\n\r\n").status == 400);
  // Past the header limit (8 KiB): refused without reading it all.
  CHECK(http(port, "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n")
            .status == 400);
  // Past the body limit (4 KiB).
  CHECK(http(port,
             "GET /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + std::string(100000, 'b'))
            .status == 400);

  // Keep-alive: two scrapes on one connection.
  {
    const int fd = connect_to(port);
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    std::string got;
    size_t done = 0;  // where the next reply starts
    for (int i = 0; i < 2; ++i) {
      REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size()));
      // Read until this reply's body is complete (Content-Length).
      for (;;) {
        const size_t head = got.find("HTTP/1.1 200 OK", done);
        const size_t end = head == std::string::npos ? head : got.find("\r\n\r\n", head);
        if (end != std::string::npos) {
          const size_t cl = got.find("Content-Length: ", head);
          REQUIRE(cl != std::string::npos);
          const size_t total = end + 4 + std::stoul(got.substr(cl + 16));
          if (got.size() >= total) {
            done = total;
            break;
          }
        }
        char buf[65536];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        REQUIRE(n > 0);
        got.append(buf, size_t(n));
      }
    }
    ::close(fd);
    CHECK(done == got.size());
    size_t replies = 0;
    for (size_t at = got.find("HTTP/1.1 200 OK"); at != std::string::npos;
         at = got.find("HTTP/1.1 200 OK", at + 1))
      ++replies;
    CHECK(replies == 2);
  }

  // The client socket never noticed: requests still go through at once.
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(c->lookup("ns", std::span<const BlockKey>(std::vector<BlockKey>{{1, 2}})).value() == 1);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
  const std::string m = get(port).body;
  CHECK(value(m, "kvtier_metrics_http_responses_total{code=\"404\"}") == 3);
  CHECK(value(m, "kvtier_metrics_http_responses_total{code=\"400\"}") == 3);
  CHECK(value(m, "kvtier_metrics_http_responses_total{code=\"200\"}") >= 5);
  ::close(idle);
  ::close(half);
  CHECK(d.stop() == 0);  // idle scrapers do not hold up the drain
}

TEST_CASE("[metrics] listen: off by default; a bad value or a port in use fails the start") {
  SECTION("a bad value is a config error naming the key") {
    const auto cfg = write_temp("bad.toml", "[metrics]\nlisten = \"localhost:9464\"\n");
    const Run r = run(testing::kvtierd_path() + " --check-config -c " + cfg.string());
    std::filesystem::remove(cfg);
    CHECK(r.code == 78);
    CHECK_THAT(r.out, Catch::Contains("metrics.listen: 'localhost:9464'"));
  }
  SECTION("a port in use") {
    const int holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(holder, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(holder, 1) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(holder, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    DaemonOptions o;
    o.extra_toml = listen_toml(ntohs(a.sin_port), 0);
    try {
      Daemon d(o);
      FAIL("kvtierd started on a port in use");
    } catch (const std::runtime_error& e) {
      CHECK_THAT(e.what(),
                 Catch::Contains("metrics.listen 127.0.0.1:") && Catch::Contains("cannot listen"));
    }
    ::close(holder);
  }
  SECTION("off: the NF4 error is not sampled, no endpoint is named in the log") {
    DaemonOptions o;
    o.codec = "nf4";
    Daemon d(o);
    auto c = Client::connect(d.socket()).value();
    auto k = normal_half(64 * 128, 9);
    std::vector<TensorIn> in = {TensorIn{"k", DType::kF16, {64, 128}, k.data()}};
    REQUIRE(c->put("ns", BlockKey{3, 4}, in).is_ok());
    auto j = nlohmann::json::parse(c->stats_json().value());
    CHECK(j["nf4_error"].empty());
    CHECK(j["codec"]["nf4_tensors"] == 1);
    std::ifstream log(d.dir() / "kvtierd.log");
    const std::string text((std::istreambuf_iterator<char>(log)), {});
    CHECK(text.find("GET /metrics") == std::string::npos);
  }
}

// Tests, scripts and docs/operations.md read these keys of `kvtierctl stats --json`; moving
// the stats onto the counter visitor must keep every one of them, with its JSON type.
TEST_CASE("kvtierctl stats --json keeps its keys") {
  DaemonOptions o;
  Daemon d(o);
  auto c = Client::connect(d.socket()).value();
  kvtier::testing::KvBlock b(BlockKey{5, 6}, 16);
  REQUIRE(c->put("ns", BlockKey{5, 6}, b.tensors).is_ok());
  const std::vector<ChunkEmbeddings> emb = {
      ChunkEmbeddings{BlockKey{5, 6}, {ModalityVector{"vision", std::vector<float>(8, 0.5f)}}}};
  REQUIRE(c->add_embeddings("ns", emb).is_ok());
  const Run ctl =
      run(std::string(KVTIER_BINARY_DIR) + "/cli/kvtierctl -s " + d.socket() + " stats --json");
  REQUIRE(ctl.code == 0);
  const auto j = nlohmann::json::parse(ctl.out);
  auto has_numbers = [](const nlohmann::json& obj, std::initializer_list<const char*> keys,
                        bool integers) {
    for (const char* k : keys) {
      INFO(k << " in " << obj.dump());
      REQUIRE(obj.contains(k));
      CHECK(obj[k].is_number());
      if (integers) CHECK(obj[k].is_number_unsigned());
    }
  };
  const auto& host = j["tiers"]["host"];
  has_numbers(host,
              {"capacity_bytes", "used_bytes", "reserved_bytes", "raw_bytes", "fusion_bytes",
               "blocks", "leased_blocks", "evictions", "evicted_bytes"},
              true);
  has_numbers(host, {"compression_ratio"}, false);
  CHECK(host["policy"] == "s3fifo");
  CHECK(host["blocks"] == 1);
  const auto& disk = j["tiers"]["disk"];
  has_numbers(disk,
              {"capacity_bytes", "used_bytes", "stored_bytes", "raw_bytes", "blocks", "regions",
               "queued_bytes", "writes", "write_bytes", "reads", "read_bytes", "write_errors",
               "read_errors", "corrupt_dropped", "regions_reclaimed", "dropped_at_open"},
              true);
  has_numbers(disk, {"compression_ratio"}, false);
  CHECK(disk["backend"].is_string());
  const auto& gpu = j["tiers"]["gpu"];
  for (const char* k : {"requested", "backend", "status"}) CHECK(gpu[k].is_string());
  CHECK(gpu["pools"].is_array());
  REQUIRE(j["arenas"].size() == 1);
  has_numbers(j["arenas"][0],
              {"arena_id", "capacity_bytes", "used_bytes", "blocks", "leased_blocks", "evictions"},
              true);
  CHECK(j["arenas"][0]["domain"] == "");
  CHECK(j["arenas"][0]["shm"].get<std::string>().rfind("/dev/shm/", 0) == 0);
  has_numbers(j, {"sessions", "leases", "pending_puts", "pid", "started_unix_ms"}, true);
  CHECK(j["instance"].is_string());
  has_numbers(j["counters"],
              {"connections_total",
               "connections_refused",
               "requests",
               "channel_requests",
               "channels_opened",
               "errors",
               "protocol_errors",
               "permission_denied",
               "lookups",
               "lookup_keys",
               "lookup_hits",
               "puts",
               "put_bytes",
               "puts_aborted",
               "puts_no_space",
               "gets",
               "get_hits",
               "get_misses",
               "releases",
               "leases_reclaimed",
               "removes",
               "demotions",
               "demotions_dropped",
               "demotion_failures",
               "demotions_skipped",
               "persisted",
               "persist_failures",
               "promotions",
               "promotion_waits",
               "promotion_failures",
               "gpu_puts",
               "gpu_put_fallbacks",
               "gpu_get_hits",
               "gpu_promotions",
               "gpu_promotion_bytes",
               "gpu_promotion_fallbacks",
               "gpu_demotions",
               "gpu_demotions_dropped",
               "gpu_copy_downs",
               "searches",
               "search_hits"},
              true);
  CHECK(j["counters"]["puts"] == 1);
  const auto& index = j["index"];
  for (const char* k : {"dir", "kernels"}) CHECK(index[k].is_string());
  CHECK(index["rebuilding"].is_boolean());
  has_numbers(index, {"exact_max_vectors", "saves", "save_failures"}, true);
  has_numbers(index, {"rebuild_dead_ratio", "last_save_ms"}, false);
  const auto& mod = index["namespaces"]["ns"]["vision"];
  CHECK(mod["type"] == "IDMap2,Flat");
  CHECK(mod["rebuilding"].is_boolean());
  has_numbers(mod,
              {"vectors", "dead", "id_slots", "dim", "nlist", "nprobe", "searches", "hits",
               "misses", "faiss_calls", "rebuilds"},
              true);
  has_numbers(
      mod,
      {"search_us_total", "search_us_mean", "faiss_us_total", "faiss_us_mean", "last_rebuild_ms"},
      false);
  CHECK(mod["vectors"] == 1);
  CHECK(mod["dim"] == 8);
  // Added with the counter visitor.
  has_numbers(j["latency"]["put_begin"], {"count"}, true);
  has_numbers(j["codec"], {"raw_tensors", "nf4_tensors", "encode_failures"}, true);
  CHECK(j["latency"]["put_begin"]["count"] == 1);
}
