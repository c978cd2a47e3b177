// Internal: the disk tier's on-disk encodings, format version 1 (docs/disk.md), and the
// payload compression.  All integers little-endian unless a comment says big-endian (LMDB
// keys are big-endian so that they sort by region, offset).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/keys.h"
#include "common/layout.h"
#include "kvtier/status.h"

namespace kvtier {

struct DiskEntry;

constexpr uint32_t kDiskFormatVersion = 1;
constexpr size_t kMaxDiskNamespaceBytes = 255;
constexpr uint64_t kRegionHeaderBytes = 4096;  // payloads start after the header

enum class DiskCompression : uint8_t {
  kNone = 0,
  kZstdPlanes2 = 1,  // 2-byte elements split into low/high byte planes, then zstd
};

// "blocks" key: key.hi (BE u64), key.lo (BE u64), namespace bytes.
std::string encode_block_key(std::string_view ns, const BlockKey& key);
// "by_region" key: region (BE u32), offset (BE u64).
std::string encode_region_offset(uint32_t region, uint64_t offset);
uint32_t decode_region_key(std::string_view k);  // first 4 bytes of a by_region/regions key
std::string encode_region_id(uint32_t region);

// A block layout (the tail of a "blocks" value; the remote tier's value header repeats it):
// total_bytes, tensor count, then each tensor (docs/disk.md).  decode_layout returns the
// bytes it read; it checks only that they are there (check_stored_layout() checks sense).
void encode_layout(std::string& out, const BlockLayout& layout);
Result<size_t> decode_layout(std::string_view in, BlockLayout& out);
// "blocks" value; decode_entry fills ns/key from the LMDB key.
std::string encode_entry(const DiskEntry& e);
Status decode_entry(std::string_view k, std::string_view v, DiskEntry& out);
// Only the fixed fields (region, offset, sizes): the open-time scan skips the layout.
Status decode_entry_fixed(std::string_view v, DiskEntry& out);
void patch_last_access(std::string& v, uint64_t unix_ms);

struct RegionRecord {
  uint64_t durable_end = kRegionHeaderBytes;  // bytes [0, durable_end) written and synced
  uint64_t created_unix_ms = 0;
  uint8_t state = 0;  // 0 open for appends, 1 sealed (full)
};
std::string encode_region_record(const RegionRecord& r);
Status decode_region_record(std::string_view v, RegionRecord& out);

// The 4096-byte header at offset 0 of every region file.
void write_region_header(std::span<std::byte> page, uint32_t region, uint64_t region_bytes,
                         uint64_t created_unix_ms);
Status check_region_header(std::span<const std::byte> page, uint32_t region);

// Whether a layout's payload is worth compressing: every tensor raw fp16/bf16.
bool compressible(const BlockLayout& layout, size_t payload_bytes);
// Plane-split + zstd level 1 into `out` (resized); false when it does not save a 4 KiB page.
bool compress_planes2(std::span<const std::byte> in, std::vector<std::byte>& out);
Status decompress_planes2(std::span<const std::byte> in, std::span<std::byte> out);

uint64_t now_unix_ms();

}  // namespace kvtier
