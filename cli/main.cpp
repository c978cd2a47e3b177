// kvtierctl: the kvtier admin CLI.  Exit codes: 0 success, 1 the daemon refused or failed the
// request, 2 usage error, 69 daemon unavailable (EX_UNAVAILABLE), 77 permission denied
// (EX_NOPERM).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <optional>

#include <toml++/toml.h>

#include "cli/events.h"
#include "cli/pin.h"
#include "cli/render.h"
#include "kvtier/client.h"

namespace {

int exit_code(const kvtier::Status& s) {
  switch (s.code()) {
    case kvtier::Errc::kOk:
      return 0;
    case kvtier::Errc::kUnavailable:
      return 69;
    case kvtier::Errc::kPermissionDenied:
      return 77;
    default:
      return 1;
  }
}

int report(const kvtier::Status& s) {
  std::cerr << "kvtierctl: " << s.to_string() << "\n";
  return exit_code(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvtierctl: inspect and administer a running kvtierd"};
  app.require_subcommand(1);
  std::string socket;
  bool json = false;
  app.add_option("-s,--socket", socket,
                 "daemon socket (default: $KVTIER_SOCKET or the built-in path)");
  app.add_flag("--json", json, "print the daemon's JSON instead of a table");

  auto* stats = app.add_subcommand("stats", "tier usage, hit rates and counters");
  auto* health = app.add_subcommand("health", "is the daemon serving, and with which backends");
  auto* clients =
      app.add_subcommand("clients", "connections with their leases, bytes and transport");
  auto* config = app.add_subcommand("config", "the daemon's effective settings (TOML)");
  auto* ls = app.add_subcommand("ls", "list cached blocks");
  std::string ls_ns;
  uint32_t ls_limit = 100;
  ls->add_option("-n,--namespace", ls_ns, "only this namespace");
  ls->add_option("--limit", ls_limit, "at most this many blocks (0 = all)");
  bool ls_fusion = false;
  ls->add_flag("--fusion", ls_fusion, "only chunks that carry fusion state");
  bool ls_pinned = false;
  ls->add_flag("--pinned", ls_pinned, "only pinned blocks");
  kvtierctl::PinArgs pin_args;
  const kvtierctl::PinCommands pins = kvtierctl::add_pin_commands(app, pin_args);
  auto* search = app.add_subcommand("search", "find cached chunks by embedding similarity");
  std::string se_ns;
  std::vector<std::string> se_queries, se_thresholds, se_weights;
  uint32_t se_k = 5;
  search->add_option("-n,--namespace", se_ns, "namespace")->required();
  search
      ->add_option("-q,--query", se_queries,
                   "MODALITY=v1,v2,... or MODALITY=@FILE (floats, whitespace/comma separated)")
      ->required();
  search->add_option("-t,--threshold", se_thresholds, "MODALITY=cosine (default 0)");
  search->add_option("-w,--weight", se_weights, "MODALITY=weight (default 1)");
  search->add_option("-k", se_k, "at most this many chunks (default 5)");
  auto* evict = app.add_subcommand("evict", "evict unleased blocks (leased ones are skipped)");
  std::string ev_ns;
  std::vector<std::string> ev_keys;
  bool ev_all = false;
  evict->add_option("-n,--namespace", ev_ns, "evict this namespace (or these keys in it)");
  evict->add_option("-k,--key", ev_keys, "block key, 32 hex digits (repeatable)");
  evict->add_flag("--all", ev_all, "evict every unleased block");
  std::string ev_tier = "all";
  evict->add_option("--tier", ev_tier, "gpu, host, disk or all (default)")
      ->check(CLI::IsMember({"gpu", "host", "disk", "all"}));
  auto* compact = app.add_subcommand("compact", "rewrite sparse disk regions and free them");
  auto* verify = app.add_subcommand("verify", "read and check every disk tier payload");
  auto* events =
      app.add_subcommand("events", "tail the KV events (vLLM's format) kvtierd publishes");
  kvtierctl::EventsOptions ev;
  int64_t ev_from = -1;
  events->add_option("--endpoint", ev.endpoint,
                     "PUB endpoint (default: the daemon's [events] endpoint)");
  events->add_option("--replay-endpoint", ev.replay_endpoint,
                     "ROUTER endpoint (default: the daemon's [events] replay_endpoint)");
  events->add_option("--from", ev_from, "replay the buffered batches from this sequence first")
      ->check(CLI::NonNegativeNumber);
  events->add_option("--count", ev.count, "exit after this many events");
  events->add_option("--idle-ms", ev.idle_ms, "exit after this many ms without a batch");
  for (auto* sub : {stats, health, clients, config, ls, evict, compact, verify, search, events,
                    pins.pin, pins.unpin})
    sub->add_flag("--json", json, "print the daemon's JSON instead of a table");

  CLI11_PARSE(app, argc, argv);

  std::vector<kvtier::BlockKey> keys;
  if (*evict) {
    for (const auto& k : ev_keys) {
      auto key = kvtier::BlockKey::from_hex(k);
      if (!key) {
        std::cerr << "kvtierctl: bad key '" << k << "' (expected 32 hex digits)\n";
        return 2;
      }
      keys.push_back(*key);
    }
    if (!ev_all && ev_ns.empty()) {
      std::cerr << "kvtierctl evict: give --namespace (with optional --key) or --all\n";
      return 2;
    }
    if (!keys.empty() && ev_ns.empty()) {
      std::cerr << "kvtierctl evict: --key needs --namespace\n";
      return 2;
    }
  }

  std::optional<std::vector<kvtier::BlockKey>> pin_keys;
  if (*pins.pin || *pins.unpin) {
    pin_keys = kvtierctl::parse_keys(pin_args.keys);
    if (!pin_keys) return 2;
  }

  if (*events && ev_from >= 0) ev.from = ev_from;
  if (*events && !ev.endpoint.empty() && (!ev.from || !ev.replay_endpoint.empty())) {
    ev.json = json;
    return kvtierctl::tail_events(ev, std::cout);
  }

  kvtier::ClientOptions opts;
  opts.socket = socket;
  opts.name = "kvtierctl";
  auto client = kvtier::Client::connect(opts);
  if (!client) return report(client.status());
  auto& c = **client;
  const bool tty = ::isatty(STDOUT_FILENO);

  if (*events) {  // the endpoints the daemon binds, from its effective settings
    auto cfg = c.config_json();
    if (!cfg) return report(cfg.status());
    auto j = nlohmann::json::parse(*cfg, nullptr, false);
    toml::table t;
    try {  // toml++ reports a parse error by throwing
      t = toml::parse(j.is_discarded() ? "" : j.value("toml", ""));
    } catch (const toml::parse_error& e) {
      std::cerr << "kvtierctl events: cannot read the daemon's settings: " << e.description()
                << "\n";
      return 1;
    }
    if (ev.endpoint.empty()) ev.endpoint = t["events"]["endpoint"].value_or(std::string());
    if (ev.replay_endpoint.empty())
      ev.replay_endpoint = t["events"]["replay_endpoint"].value_or(std::string());
    if (ev.endpoint.empty() || (ev.from && ev.replay_endpoint.empty())) {
      std::cerr << "kvtierctl events: the daemon publishes no KV events"
                << (ev.endpoint.empty() ? "" : " replay") << " ([events] in its config)\n";
      return 1;
    }
    ev.json = json;
    return kvtierctl::tail_events(ev, std::cout);
  }

  kvtier::Result<std::string> doc = std::string();
  if (*stats) doc = c.stats_json();
  if (*health) doc = c.health_json();
  if (*clients) doc = c.clients_json();
  if (*config) doc = c.config_json();
  if (*ls) doc = c.list_json(ls_ns, ls_limit, ls_fusion, ls_pinned);
  if (*pins.pin || *pins.unpin) {
    kvtier::Status st =
        kvtierctl::run_pin(c, pin_args, *pin_keys, bool(*pins.unpin), json, std::cout);
    return st ? 0 : report(st);
  }
  if (*search) {
    auto queries = kvtierctl::parse_queries(se_queries, se_thresholds, se_weights);
    if (!queries) {
      std::cerr << "kvtierctl search: " << queries.status().message() << "\n";
      return 2;
    }
    auto r = c.search(se_ns, *queries, se_k);
    if (!r) return report(r.status());
    kvtierctl::print_search(std::cout, *queries, *r, json);
    return 0;
  }
  if (*compact || *verify) {
    kvtierctl::ProgressBar bar(*compact ? "compact" : "verify", ::isatty(STDERR_FILENO) && !json);
    auto r = *compact ? c.compact(bar.callback()) : c.verify(bar.callback());
    bar.finish();
    if (!r) return report(r.status());
    auto j = nlohmann::json::parse(*r, nullptr, false);
    if (json || j.is_discarded()) {
      std::cout << *r << "\n";
    } else if (*compact) {
      std::cout << "moved " << j.value("moved", 0) << " blocks, freed "
                << j.value("regions_freed", 0) << " regions ("
                << kvtierctl::human_bytes(j.value("bytes_freed", uint64_t{0})) << ")\n";
    } else {
      std::cout << "checked " << j.value("checked", 0) << " blocks, " << j.value("corrupt", 0)
                << " corrupt (dropped)\n";
    }
    return 0;
  }
  if (*evict) {
    const auto tier = ev_tier == "host"   ? kvtier::TierSel::kHost
                      : ev_tier == "disk" ? kvtier::TierSel::kDisk
                      : ev_tier == "gpu"  ? kvtier::TierSel::kGpu
                                          : kvtier::TierSel::kAll;
    auto r = c.evict(ev_ns, keys, ev_all, tier);
    if (!r) return report(r.status());
    if (json) {
      std::cout << nlohmann::json{{"evicted", r->evicted},
                                  {"skipped_leased", r->skipped_leased},
                                  {"bytes", r->bytes},
                                  {"disk_evicted", r->disk_evicted},
                                  {"gpu_evicted", r->gpu_evicted}}
                       .dump(2)
                << "\n";
    } else {
      std::cout << "evicted " << r->evicted + r->gpu_evicted << " blocks ("
                << kvtierctl::human_bytes(r->bytes) << "); skipped " << r->skipped_leased
                << " leased";
      if (tier == kvtier::TierSel::kAll || tier == kvtier::TierSel::kGpu)
        std::cout << "; gpu: evicted " << r->gpu_evicted;
      if (tier == kvtier::TierSel::kAll || tier == kvtier::TierSel::kDisk)
        std::cout << "; disk: evicted " << r->disk_evicted;
      std::cout << "\n";
    }
    return 0;
  }
  if (!doc) return report(doc.status());
  auto j = nlohmann::json::parse(*doc, nullptr, false);
  if (j.is_discarded()) {
    std::cerr << "kvtierctl: the daemon sent malformed JSON\n";
    return 1;
  }
  if (*config) {
    std::cout << (json ? j.dump(2) : j.value("toml", "")) << (json ? "\n" : "");
    return 0;
  }
  if (json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  if (*stats) kvtierctl::print_stats(std::cout, j, tty);
  if (*health) kvtierctl::print_health(std::cout, j);
  if (*clients) kvtierctl::print_clients(std::cout, j);
  if (*ls) kvtierctl::print_list(std::cout, j);
  if (*health && j.value("status", "") != "serving") return 1;
  return 0;
}
