// kvtierctl pin / unpin (docs/operations.md, "Pins").
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "kvtier/client.h"

namespace kvtierctl {

struct PinArgs {
  std::string ns;
  std::vector<std::string> keys;  // 32 hex digits each
  uint64_t ttl_ms = 0;
  bool gpu = false;
  int device = -1;
};

// Adds the `pin` and `unpin` subcommands to `app`, filling `args`.
struct PinCommands {
  CLI::App* pin = nullptr;
  CLI::App* unpin = nullptr;
};
PinCommands add_pin_commands(CLI::App& app, PinArgs& args);

// The keys, or nullopt after printing which one is malformed.
std::optional<std::vector<kvtier::BlockKey>> parse_keys(const std::vector<std::string>& hex);

// Pins (or unpins) and prints the outcome; the daemon's error otherwise.
kvtier::Status run_pin(kvtier::Client& c, const PinArgs& args,
                       const std::vector<kvtier::BlockKey>& keys, bool unpin, bool json,
                       std::ostream& out);

}  // namespace kvtierctl
