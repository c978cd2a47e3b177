// Internal: the remote tier's keys and values in the Redis Cluster, format version 1
// (docs/remote.md, "Keys and values").  All integers little-endian.
//
// A block is stored as one value, or as several when it is larger than max_value_bytes:
//
//   <prefix>:{<key hex>.<ns digest>}       part 0: the header, then the first payload bytes
//   <prefix>:{<key hex>.<ns digest>}:<i>   part i >= 1: a part header, then payload bytes
//
// The braces make every part of a block hash to one slot (one node, one pipelined round
// trip).  The namespace is in the key as a 64-bit digest of its name and, in full, in the
// header: a value whose header names another namespace or key (a digest collision, a value
// written under the wrong key) is refused like a corrupt one.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/layout.h"
#include "kvtier/keys.h"
#include "kvtier/status.h"

namespace kvtier::remote {

constexpr uint16_t kFormatVersion = 1;
constexpr uint32_t kValueMagic = 0x4256524B;  // "KRVB" little-endian: part 0
constexpr uint32_t kPartMagic = 0x5056524B;   // "KRVP": parts 1..n
constexpr size_t kPartHeaderBytes = 24;
constexpr uint32_t kMaxParts = 4096;

enum class Compression : uint8_t {
  kNone = 0,
  kZstdPlanes2 = 1,  // the disk tier's fp16 byte planes + zstd (tiers/disk/disk_format.h)
};

// Part 0's header.
struct ValueHeader {
  std::string ns;  // the namespace name, in full
  BlockKey key;
  Compression compression = Compression::kNone;
  uint32_t parts = 1;
  uint64_t stored_bytes = 0;      // payload bytes as stored (compressed), over every part
  uint64_t payload_checksum = 0;  // XXH3-64 of those bytes: the copy's version
  uint64_t created_unix_ms = 0;
  BlockLayout layout;  // the block as the host tier holds it (payload = layout.total_bytes)
};

// The Redis key of part `part` of a block.
std::string value_key(std::string_view prefix, std::string_view ns, const BlockKey& key,
                      uint32_t part = 0);

// Part 0's header bytes (ending with their own XXH3-64); the payload follows them.
std::string encode_header(const ValueHeader& h);
// Decodes and checks part 0's header: magic, version, header checksum, a layout that makes
// sense (check_stored_layout).  Returns the header's size (the payload starts there).
Result<size_t> decode_header(std::string_view value, ValueHeader& out);

// Part i's header (magic, version, index, the block's payload checksum).
std::string encode_part_header(uint32_t part, uint64_t payload_checksum);
// kCorrupt unless `value` starts with part `part`'s header for that payload checksum.
Status check_part_header(std::string_view value, uint32_t part, uint64_t payload_checksum);

// A layout read from outside the daemon: enums in range, sizes bounded, every tensor inside
// the block, raw tensors exactly as large as their shape says.
Status check_stored_layout(const BlockLayout& layout);
// Every tensor's bytes in `payload` match the checksum its layout carries.
Status verify_tensors(const BlockLayout& layout, std::span<const std::byte> payload);

}  // namespace kvtier::remote
