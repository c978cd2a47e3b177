#include "daemon/events/kv_events.h"

#include <msgpack.hpp>

#include <cstring>

namespace kvtier::events {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void pack_key(Packer& pk, const BlockKey& k) {
  char b[16];
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<char>(k.hi >> (56 - 8 * i));
    b[8 + i] = static_cast<char>(k.lo >> (56 - 8 * i));
  }
  pk.pack_bin(16);
  pk.pack_bin_body(b, 16);
}

void pack_keys(Packer& pk, std::span<const BlockKey> keys) {
  pk.pack_array(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) pack_key(pk, k);
}

// vLLM's BlockStored: block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
// lora_name (no defaults: always written), then extra_keys, group_idx, kv_cache_spec_kind,
// kv_cache_spec_sliding_window (default None: left out).
void pack_event(Packer& pk, const KvEvent& e) {
  switch (e.type) {
    case EventType::kStored:
      pk.pack_map(9);
      pack_str(pk, "type");
      pack_str(pk, "BlockStored");
      pack_str(pk, "block_hashes");
      pack_keys(pk, e.keys);
      pack_str(pk, "parent_block_hash");
      if (e.parent) {
        pack_key(pk, *e.parent);
      } else {
        pk.pack_nil();
      }
      pack_str(pk, "token_ids");
      pk.pack_array(0);  // kvtier keeps no token ids: its keys already hash them
      pack_str(pk, "block_size");
      pk.pack_uint32(e.block_size);
      pack_str(pk, "lora_id");
      pk.pack_nil();
      pack_str(pk, "medium");
      pack_str(pk, medium_name(e.medium));
      pack_str(pk, "lora_name");
      pk.pack_nil();
      break;
    case EventType::kRemoved:  // block_hashes, medium; group_idx (None) left out
      pk.pack_map(4);
      pack_str(pk, "type");
      pack_str(pk, "BlockRemoved");
      pack_str(pk, "block_hashes");
      pack_keys(pk, e.keys);
      pack_str(pk, "medium");
      pack_str(pk, medium_name(e.medium));
      break;
    case EventType::kCleared:
      pk.pack_map(1);
      pack_str(pk, "type");
      pack_str(pk, "AllBlocksCleared");
      return;
  }
  pack_str(pk, "kvtier_namespace");
  pack_str(pk, e.ns);
}

// --- decoding ---

using Obj = msgpack::object;

std::string_view str_of(const Obj& o) {
  return o.type == msgpack::type::STR ? std::string_view(o.via.str.ptr, o.via.str.size)
                                      : std::string_view();
}

const Obj* field(const Obj& map, std::string_view name) {
  for (uint32_t i = 0; i < map.via.map.size; ++i)
    if (str_of(map.via.map.ptr[i].key) == name) return &map.via.map.ptr[i].val;
  return nullptr;
}

std::optional<BlockKey> key_of(const Obj& o) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) return BlockKey{o.via.u64, 0};
  if (o.type != msgpack::type::BIN || o.via.bin.size != 16) return std::nullopt;
  BlockKey k;
  for (int i = 0; i < 8; ++i) {
    k.hi = (k.hi << 8) | static_cast<uint8_t>(o.via.bin.ptr[i]);
    k.lo = (k.lo << 8) | static_cast<uint8_t>(o.via.bin.ptr[8 + i]);
  }
  return k;
}

bool keys_of(const Obj* o, std::vector<BlockKey>& out) {
  if (o == nullptr || o->type != msgpack::type::ARRAY) return false;
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    auto k = key_of(o->via.array.ptr[i]);
    if (!k) return false;
    out.push_back(*k);
  }
  return true;
}

std::optional<Medium> medium_of_name(std::string_view s) {
  for (Medium m : {Medium::kGpu, Medium::kCpu, Medium::kDisk, Medium::kRemote})
    if (s == medium_name(m)) return m;
  return std::nullopt;
}

// The fields of one event as (tag, block_hashes, parent, block_size, medium, namespace), from
// a map or from vLLM's older positional array.
bool decode_event(const Obj& o, KvEvent& e) {
  std::string_view tag;
  const Obj *hashes = nullptr, *parent = nullptr, *size = nullptr, *medium = nullptr, *ns = nullptr;
  if (o.type == msgpack::type::MAP) {
    const Obj* t = field(o, "type");
    if (t == nullptr) return false;
    tag = str_of(*t);
    hashes = field(o, "block_hashes");
    parent = field(o, "parent_block_hash");
    size = field(o, "block_size");
    medium = field(o, "medium");
    ns = field(o, "kvtier_namespace");
  } else if (o.type == msgpack::type::ARRAY && o.via.array.size > 0) {
    const Obj* a = o.via.array.ptr;
    const uint32_t n = o.via.array.size;
    tag = str_of(a[0]);
    if (n > 1) hashes = &a[1];
    if (tag == "BlockStored") {
      if (n > 2) parent = &a[2];
      if (n > 4) size = &a[4];
      if (n > 6) medium = &a[6];
    } else if (n > 2) {
      medium = &a[2];
    }
  } else {
    return false;
  }
  if (tag == "AllBlocksCleared") {
    e.type = EventType::kCleared;
    return true;
  }
  if (tag == "BlockStored") {
    e.type = EventType::kStored;
  } else if (tag == "BlockRemoved") {
    e.type = EventType::kRemoved;
  } else {
    return false;
  }
  if (!keys_of(hashes, e.keys)) return false;
  if (parent != nullptr && parent->type != msgpack::type::NIL) {
    e.parent = key_of(*parent);
    if (!e.parent) return false;
  }
  if (size != nullptr && size->type == msgpack::type::POSITIVE_INTEGER)
    e.block_size = static_cast<uint32_t>(size->via.u64);
  // vLLM's medium may be None; kvtier always names one.
  if (medium != nullptr && medium->type == msgpack::type::STR) {
    auto m = medium_of_name(str_of(*medium));
    e.medium = m.value_or(Medium::kGpu);
  }
  if (ns != nullptr) e.ns = std::string(str_of(*ns));
  return true;
}

}  // namespace

const char* event_type_name(EventType t) {
  switch (t) {
    case EventType::kStored:
      return "BlockStored";
    case EventType::kRemoved:
      return "BlockRemoved";
    case EventType::kCleared:
      return "AllBlocksCleared";
  }
  return "BlockStored";
}

std::string encode_batch(const KvEventBatch& batch) {
  msgpack::sbuffer buf;
  Packer pk(&buf);
  // vLLM's EventBatch: ts, events, data_parallel_rank (default None: left out when unset).
  pk.pack_map(batch.data_parallel_rank ? 3 : 2);
  pack_str(pk, "ts");
  pk.pack_double(batch.ts);
  pack_str(pk, "events");
  pk.pack_array(static_cast<uint32_t>(batch.events.size()));
  for (const auto& e : batch.events) pack_event(pk, e);
  if (batch.data_parallel_rank) {
    pack_str(pk, "data_parallel_rank");
    pk.pack_int64(*batch.data_parallel_rank);
  }
  return std::string(buf.data(), buf.size());
}

Result<KvEventBatch> decode_batch(std::string_view payload) {
  msgpack::object_handle oh;
  try {
    oh = msgpack::unpack(payload.data(), payload.size());
  } catch (const std::exception& ex) {  // msgpack-c reports malformed input by throwing
    return error(Errc::kInvalidArgument, std::string("not msgpack: ") + ex.what());
  }
  const Obj& o = oh.get();
  const Obj *ts = nullptr, *events = nullptr, *rank = nullptr;
  if (o.type == msgpack::type::MAP) {
    ts = field(o, "ts");
    events = field(o, "events");
    rank = field(o, "data_parallel_rank");
  } else if (o.type == msgpack::type::ARRAY && o.via.array.size >= 2) {
    ts = &o.via.array.ptr[0];
    events = &o.via.array.ptr[1];
    if (o.via.array.size > 2) rank = &o.via.array.ptr[2];
  }
  if (ts == nullptr || events == nullptr || events->type != msgpack::type::ARRAY)
    return error(Errc::kInvalidArgument, "not a KVEventBatch");
  KvEventBatch b;
  if (ts->type == msgpack::type::FLOAT64 || ts->type == msgpack::type::FLOAT32) {
    b.ts = ts->via.f64;
  } else if (ts->type == msgpack::type::POSITIVE_INTEGER) {
    b.ts = static_cast<double>(ts->via.u64);
  } else {
    return error(Errc::kInvalidArgument, "KVEventBatch: ts is not a number");
  }
  if (rank != nullptr && rank->type == msgpack::type::POSITIVE_INTEGER)
    b.data_parallel_rank = static_cast<int64_t>(rank->via.u64);
  for (uint32_t i = 0; i < events->via.array.size; ++i) {
    KvEvent e;
    if (!decode_event(events->via.array.ptr[i], e))
      return error(Errc::kInvalidArgument, "KVEventBatch: event " + std::to_string(i) +
                                               " is not a BlockStored, BlockRemoved or "
                                               "AllBlocksCleared");
    b.events.push_back(std::move(e));
  }
  return b;
}

std::string encode_seq(int64_t seq) {
  std::string s(8, '\0');
  const auto u = static_cast<uint64_t>(seq);
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(u >> (56 - 8 * i));
  return s;
}

std::optional<int64_t> decode_seq(std::string_view frame) {
  if (frame.size() != 8) return std::nullopt;
  uint64_t u = 0;
  for (char c : frame) u = (u << 8) | static_cast<uint8_t>(c);
  return static_cast<int64_t>(u);
}

}  // namespace kvtier::events
