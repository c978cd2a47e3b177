#include "cli/pin.h"

#include <nlohmann/json.hpp>

#include <iostream>

#include "cli/render.h"

namespace kvtierctl {

PinCommands add_pin_commands(CLI::App& app, PinArgs& a) {
  PinCommands c;
  c.pin = app.add_subcommand(
      "pin", "keep cached blocks from eviction until unpinned or the TTL ends (all or nothing)");
  c.unpin = app.add_subcommand("unpin", "drop pins (keys not pinned are skipped)");
  for (CLI::App* sub : {c.pin, c.unpin}) {
    sub->add_option("-n,--namespace", a.ns, "namespace")->required();
    sub->add_option("-k,--key", a.keys, "block key, 32 hex digits (repeatable)")->required();
  }
  c.pin->add_option("--ttl-ms", a.ttl_ms, "expire the pins after this many ms (0 = never)");
  c.pin->add_flag("--gpu", a.gpu, "pin in a GPU tier (promoting the blocks) instead of host");
  c.pin->add_option("--device", a.device, "with --gpu: the GPU (default: the first GPU tier)");
  return c;
}

std::optional<std::vector<kvtier::BlockKey>> parse_keys(const std::vector<std::string>& hex) {
  std::vector<kvtier::BlockKey> keys;
  for (const auto& k : hex) {
    auto key = kvtier::BlockKey::from_hex(k);
    if (!key) {
      std::cerr << "kvtierctl: bad key '" << k << "' (expected 32 hex digits)\n";
      return std::nullopt;
    }
    keys.push_back(*key);
  }
  return keys;
}

kvtier::Status run_pin(kvtier::Client& c, const PinArgs& a,
                       const std::vector<kvtier::BlockKey>& keys, bool unpin, bool json,
                       std::ostream& out) {
  if (unpin) {
    auto r = c.unpin(a.ns, keys);
    if (!r) return r.status();
    if (json) {
      out << nlohmann::json{{"unpinned", *r}}.dump(2) << "\n";
    } else {
      out << "unpinned " << *r << " of " << keys.size() << " keys\n";
    }
    return {};
  }
  kvtier::PinOptions o;
  o.ttl_ms = a.ttl_ms;
  o.gpu = a.gpu;
  o.device = a.device;
  auto r = c.pin(a.ns, keys, o);
  if (!r) return r.status();
  if (json) {
    out << nlohmann::json{{"pinned", r->pinned},
                          {"refreshed", r->refreshed},
                          {"pinned_bytes", r->pinned_bytes},
                          {"quota_bytes", r->quota_bytes}}
               .dump(2)
        << "\n";
  } else {
    out << "pinned " << r->pinned << " blocks (" << r->refreshed << " refreshed); " << a.ns
        << " pins " << human_bytes(r->pinned_bytes) << " of " << human_bytes(r->quota_bytes)
        << "\n";
  }
  return {};
}

}  // namespace kvtierctl
