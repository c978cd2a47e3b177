// kvtierctl events: tails kvtierd's KV events (docs/events.md) — subscribes to the PUB
// endpoint, optionally replays from a sequence number first, and prints one line per event.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

namespace kvtierctl {

struct EventsOptions {
  std::string endpoint;         // PUB endpoint to connect to
  std::string replay_endpoint;  // ROUTER endpoint (needed with `from`)
  std::optional<int64_t> from;  // replay the buffered batches from this sequence number first
  bool json = false;            // one JSON object per line
  uint64_t count = 0;           // stop after this many events (0: never)
  uint32_t idle_ms = 0;         // stop after this long without a batch (0: never)
};

// The endpoint a subscriber connects to for one kvtierd binds: a wildcard host ("*",
// "0.0.0.0", "[::]") becomes the loopback address.
std::string connect_endpoint(const std::string& bound);

// Returns the exit code: 0, 1 when the stream is broken (undecodable batch, replay refused).
int tail_events(const EventsOptions& o, std::ostream& out);

}  // namespace kvtierctl
