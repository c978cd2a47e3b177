// vLLM's KV events on the wire (docs/events.md): a KVEventBatch encoded with msgpack exactly
// as vLLM's msgspec encoder writes it (vllm/distributed/kv_events.py at the commit docs/events.md
// names), and decoded back for kvtierctl and the tests.
//
// A batch is a map {"ts", "events", "data_parallel_rank"}; each event a map whose first entry is
// the tag "type" ("BlockStored", "BlockRemoved", "AllBlocksCleared") followed by the struct's
// fields in declaration order, fields at their default (None) left out as msgspec's
// omit_defaults does.  A block hash is kvtier's 128-bit chain key as 16 bytes (msgpack bin,
// big-endian: hi then lo, the order BlockKey::hex() prints), which vLLM's ExternalBlockHash
// (bytes | int) allows.  kvtier adds one field vLLM's decoder ignores (unknown map keys are):
// "kvtier_namespace".
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/block_events.h"
#include "kvtier/keys.h"
#include "kvtier/status.h"

namespace kvtier::events {

enum class EventType : uint8_t { kStored, kRemoved, kCleared };
const char* event_type_name(EventType t);  // vLLM's tag: "BlockStored", ...

struct KvEvent {
  EventType type = EventType::kStored;
  Medium medium = Medium::kCpu;    // not for kCleared
  std::string ns;                  // "kvtier_namespace"; empty for kCleared
  std::vector<BlockKey> keys;      // "block_hashes"
  std::optional<BlockKey> parent;  // kStored: "parent_block_hash"
  uint32_t block_size = 0;         // kStored: tokens per block; 0 = not known to kvtier
};

struct KvEventBatch {
  double ts = 0;  // seconds since the Unix epoch
  std::vector<KvEvent> events;
  std::optional<int64_t> data_parallel_rank;
};

// The msgpack payload of one batch (the third frame of a PUB message).
std::string encode_batch(const KvEventBatch& batch);
// Decodes a payload encode_batch() or vLLM wrote (map or positional-array events; unknown
// fields ignored; int block hashes of up to 64 bits become {lo = hash, hi = 0}).
// kInvalidArgument when it is not a KVEventBatch.
Result<KvEventBatch> decode_batch(std::string_view payload);

// The 8-byte big-endian sequence number frame; -1 ends a replay.
std::string encode_seq(int64_t seq);
std::optional<int64_t> decode_seq(std::string_view frame);

}  // namespace kvtier::events
