// The KVEventBatch encoder against msgpack-c's own decoder: the map layout vLLM's msgspec
// structs read (docs/events.md), field by field, and the decoder kvtierctl uses.
#include <catch2/catch.hpp>

#include <msgpack.hpp>

#include "daemon/events/kv_events.h"

using namespace kvtier;
using namespace kvtier::events;

namespace {

using Obj = msgpack::object;

std::string str(const Obj& o) {
  REQUIRE(o.type == msgpack::type::STR);
  return std::string(o.via.str.ptr, o.via.str.size);
}

// The map's keys in order, and a value by key.
std::vector<std::string> keys_of(const Obj& map) {
  REQUIRE(map.type == msgpack::type::MAP);
  std::vector<std::string> out;
  for (uint32_t i = 0; i < map.via.map.size; ++i) out.push_back(str(map.via.map.ptr[i].key));
  return out;
}
const Obj& at(const Obj& map, const std::string& key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i)
    if (str(map.via.map.ptr[i].key) == key) return map.via.map.ptr[i].val;
  FAIL("no key " << key);
  return map;
}

std::string bin(const Obj& o) {
  REQUIRE(o.type == msgpack::type::BIN);
  return std::string(o.via.bin.ptr, o.via.bin.size);
}

const BlockKey kA{.lo = 0x0102030405060708ull, .hi = 0x1122334455667788ull};
const BlockKey kB{.lo = 0xa0ull, .hi = 0xffull};

}  // namespace

TEST_CASE("kv events: a batch encodes as vLLM's KVEventBatch map, field by field") {
  KvEventBatch b;
  b.ts = 1700000000.25;
  b.data_parallel_rank = 0;
  b.events.push_back({EventType::kStored, Medium::kCpu, "model/a", {kA, kB}, std::nullopt, 0});
  b.events.push_back({EventType::kRemoved, Medium::kDisk, "model/a", {kB}, {}, 0});
  b.events.push_back({EventType::kCleared, Medium::kCpu, {}, {}, {}, 0});
  b.events.push_back({EventType::kStored, Medium::kGpu, "m", {kB}, kA, 16});
  const std::string payload = encode_batch(b);

  msgpack::object_handle oh = msgpack::unpack(payload.data(), payload.size());
  const Obj& batch = oh.get();
  CHECK(keys_of(batch) == std::vector<std::string>{"ts", "events", "data_parallel_rank"});
  REQUIRE(at(batch, "ts").type == msgpack::type::FLOAT64);
  CHECK(at(batch, "ts").via.f64 == 1700000000.25);
  REQUIRE(at(batch, "data_parallel_rank").type == msgpack::type::POSITIVE_INTEGER);
  CHECK(at(batch, "data_parallel_rank").via.u64 == 0);
  const Obj& events = at(batch, "events");
  REQUIRE(events.type == msgpack::type::ARRAY);
  REQUIRE(events.via.array.size == 4);

  // BlockStored: the tag first, then the fields without defaults in declaration order.
  const Obj& s = events.via.array.ptr[0];
  CHECK(keys_of(s) == std::vector<std::string>{"type", "block_hashes", "parent_block_hash",
                                               "token_ids", "block_size", "lora_id", "medium",
                                               "lora_name", "kvtier_namespace"});
  CHECK(str(at(s, "type")) == "BlockStored");
  const Obj& hashes = at(s, "block_hashes");
  REQUIRE(hashes.type == msgpack::type::ARRAY);
  REQUIRE(hashes.via.array.size == 2);
  // 16 bytes, big-endian hi then lo: the bytes of BlockKey::hex().
  CHECK(bin(hashes.via.array.ptr[0]) ==
        std::string("\x11\x22\x33\x44\x55\x66\x77\x88\x01\x02\x03\x04\x05\x06\x07\x08", 16));
  CHECK(bin(hashes.via.array.ptr[1]) == std::string("\0\0\0\0\0\0\0\xff\0\0\0\0\0\0\0\xa0", 16));
  CHECK(at(s, "parent_block_hash").type == msgpack::type::NIL);
  REQUIRE(at(s, "token_ids").type == msgpack::type::ARRAY);
  CHECK(at(s, "token_ids").via.array.size == 0);
  REQUIRE(at(s, "block_size").type == msgpack::type::POSITIVE_INTEGER);
  CHECK(at(s, "block_size").via.u64 == 0);
  CHECK(at(s, "lora_id").type == msgpack::type::NIL);
  CHECK(str(at(s, "medium")) == "CPU");
  CHECK(at(s, "lora_name").type == msgpack::type::NIL);
  CHECK(str(at(s, "kvtier_namespace")) == "model/a");

  const Obj& r = events.via.array.ptr[1];
  CHECK(keys_of(r) ==
        std::vector<std::string>{"type", "block_hashes", "medium", "kvtier_namespace"});
  CHECK(str(at(r, "type")) == "BlockRemoved");
  CHECK(at(r, "block_hashes").via.array.size == 1);
  CHECK(str(at(r, "medium")) == "DISK");

  const Obj& c = events.via.array.ptr[2];
  CHECK(keys_of(c) == std::vector<std::string>{"type"});
  CHECK(str(at(c, "type")) == "AllBlocksCleared");

  const Obj& g = events.via.array.ptr[3];
  CHECK(bin(at(g, "parent_block_hash")) == bin(hashes.via.array.ptr[0]));
  CHECK(at(g, "block_size").via.u64 == 16);
  CHECK(str(at(g, "medium")) == "GPU");
}

TEST_CASE("kv events: decode_batch reads back what encode_batch wrote") {
  KvEventBatch b;
  b.ts = 12.5;
  b.events.push_back({EventType::kStored, Medium::kGpu, "n", {kA}, kB, 0});
  b.events.push_back({EventType::kRemoved, Medium::kCpu, "n", {kA, kB}, {}, 0});
  b.events.push_back({EventType::kCleared, Medium::kCpu, {}, {}, {}, 0});
  const std::string payload = encode_batch(b);
  // Without a rank the field is left out, as msgspec's omit_defaults does for None.
  msgpack::object_handle oh = msgpack::unpack(payload.data(), payload.size());
  CHECK(keys_of(oh.get()) == std::vector<std::string>{"ts", "events"});

  auto d = decode_batch(payload);
  REQUIRE(d);
  CHECK(d->ts == 12.5);
  CHECK_FALSE(d->data_parallel_rank);
  REQUIRE(d->events.size() == 3);
  CHECK(d->events[0].type == EventType::kStored);
  CHECK(d->events[0].medium == Medium::kGpu);
  CHECK(d->events[0].ns == "n");
  CHECK(d->events[0].keys == std::vector<BlockKey>{kA});
  CHECK(d->events[0].parent == kB);
  CHECK(d->events[1].type == EventType::kRemoved);
  CHECK(d->events[1].keys == std::vector<BlockKey>{kA, kB});
  CHECK(d->events[2].type == EventType::kCleared);
}

TEST_CASE("kv events: decode_batch reads vLLM's older positional arrays and int hashes") {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(&buf);
  pk.pack_array(3);
  pk.pack_double(1.0);
  pk.pack_array(2);
  pk.pack_array(7);  // BlockStored, hashes, parent, token_ids, block_size, lora_id, medium
  pk.pack(std::string("BlockStored"));
  pk.pack_array(1);
  pk.pack_uint64(123);
  pk.pack_nil();
  pk.pack_array(2);
  pk.pack_uint32(1);
  pk.pack_uint32(2);
  pk.pack_uint32(2);
  pk.pack_nil();
  pk.pack(std::string("GPU"));
  pk.pack_array(3);
  pk.pack(std::string("BlockRemoved"));
  pk.pack_array(1);
  pk.pack_uint64(123);
  pk.pack(std::string("CPU"));
  pk.pack_uint32(1);
  auto d = decode_batch(std::string_view(buf.data(), buf.size()));
  REQUIRE(d);
  CHECK(d->data_parallel_rank == 1);
  REQUIRE(d->events.size() == 2);
  CHECK(d->events[0].keys == std::vector<BlockKey>{BlockKey{123, 0}});
  CHECK(d->events[0].block_size == 2);
  CHECK(d->events[0].medium == Medium::kGpu);
  CHECK(d->events[1].medium == Medium::kCpu);
}

TEST_CASE("kv events: garbage is refused, sequence frames round-trip") {
  CHECK_FALSE(decode_batch("\xc1"));
  CHECK_FALSE(decode_batch(std::string_view("\x93\x01\x02\x03", 4)));
  CHECK(encode_seq(-1) == std::string(8, '\xff'));
  CHECK(encode_seq(258) == std::string("\0\0\0\0\0\0\x01\x02", 8));
  CHECK(decode_seq(encode_seq(-1)) == -1);
  CHECK(decode_seq(encode_seq(1234567)) == 1234567);
  CHECK_FALSE(decode_seq("abc"));
}
