// Block events: what the engine tells a listener about the blocks its tiers hold, for KV-aware
// request routers (docs/events.md).  The daemon's publisher (daemon/events/) turns them into
// vLLM's KV events; tests record them.
//
// A block is "stored" in a tier when it becomes findable there (a sealed put, a promotion into
// the host tier or a GPU, a copy down, a write to the disk tier that is durable) and "removed"
// when it stops being findable there (capacity eviction, remove, admin eviction, a disk region
// reclaimed, a corrupt disk copy dropped).  "cleared" means every tier dropped every block.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "common/counters.h"
#include "kvtier/keys.h"
#include "tiers/tier.h"

namespace kvtier {

// vLLM's `medium` strings: "GPU", "CPU" (kvtier's host tier), and kvtier's "DISK", "REMOTE".
enum class Medium : uint8_t { kGpu = 0, kCpu = 1, kDisk = 2, kRemote = 3 };
inline const char* medium_name(Medium m) {
  constexpr const char* kNames[] = {"GPU", "CPU", "DISK", "REMOTE"};
  return kNames[static_cast<uint8_t>(m) & 3];
}
// Medium's values are TierKind's (GPU 0, host 1, disk 2, and the remote tier's 3), so a tier
// kind added with the next number needs no change here.
inline Medium medium_of(TierKind kind) {
  return static_cast<Medium>(static_cast<uint8_t>(kind));
}
static_assert(static_cast<uint8_t>(TierKind::kGpu) == static_cast<uint8_t>(Medium::kGpu) &&
              static_cast<uint8_t>(TierKind::kHost) == static_cast<uint8_t>(Medium::kCpu) &&
              static_cast<uint8_t>(TierKind::kDisk) == static_cast<uint8_t>(Medium::kDisk));

// Called by the engine, often with its mutex held, and by the disk tier's threads: every
// method is thread-safe, never blocks on I/O and never calls back into the engine (an
// implementation appends to a queue of its own).  `keys` and `ns` are copied before returning.
class BlockEventSink {
 public:
  virtual ~BlockEventSink() = default;
  // `parent`: the key of the block before keys[0] in its chain, when known (the engine does
  // not know it: nullopt).
  virtual void stored(std::string_view ns, std::span<const BlockKey> keys, Medium medium,
                      std::optional<BlockKey> parent = std::nullopt) = 0;
  virtual void removed(std::string_view ns, std::span<const BlockKey> keys, Medium medium) = 0;
  virtual void cleared() = 0;
  // The sink's own counters (the publisher's: events published, dropped, replays).
  virtual void visit_counters(CounterVisitor&) const {}
};

}  // namespace kvtier
