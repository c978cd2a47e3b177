// The remote tier's value format, version 1 (docs/remote.md).
#include "tiers/remote/remote_format.h"

#include <cstdio>
#include <cstring>

#include "tiers/disk/disk_format.h"

namespace kvtier::remote {
namespace {

template <typename T>
void put_le(std::string& s, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) s.push_back(char(uint64_t(v) >> (8 * i)));
}

template <typename T>
T get_le(std::string_view s, size_t pos) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(uint8_t(s[pos + i])) << (8 * i);
  return T(v);
}

// Fixed part of the header: magic u32, version u16, header_bytes u16, key 16, compression u8,
// reserved u8, ns_len u16, parts u32, stored_bytes u64, payload_checksum u64, created u64.
constexpr size_t kFixedBytes = 4 + 2 + 2 + 16 + 1 + 1 + 2 + 4 + 8 + 8 + 8;
constexpr uint64_t kMaxBlockBytes = 1ull << 40;  // a sanity bound on any size read

}  // namespace

std::string value_key(std::string_view prefix, std::string_view ns, const BlockKey& key,
                      uint32_t part) {
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx",
                static_cast<unsigned long long>(checksum64(ns.data(), ns.size())));
  std::string k;
  k.reserve(prefix.size() + 64);
  k.append(prefix).append(":{").append(key.hex()).append(".").append(digest).append("}");
  if (part != 0) k.append(":").append(std::to_string(part));
  return k;
}

std::string encode_header(const ValueHeader& h) {
  std::string s;
  s.reserve(kFixedBytes + h.ns.size() + 64 * (h.layout.tensors.size() + 1));
  put_le<uint32_t>(s, kValueMagic);
  put_le<uint16_t>(s, kFormatVersion);
  put_le<uint16_t>(s, 0);  // header_bytes, patched below
  put_le<uint64_t>(s, h.key.lo);
  put_le<uint64_t>(s, h.key.hi);
  put_le<uint8_t>(s, uint8_t(h.compression));
  put_le<uint8_t>(s, 0);
  put_le<uint16_t>(s, uint16_t(h.ns.size()));
  put_le<uint32_t>(s, h.parts);
  put_le<uint64_t>(s, h.stored_bytes);
  put_le<uint64_t>(s, h.payload_checksum);
  put_le<uint64_t>(s, h.created_unix_ms);
  s.append(h.ns);
  encode_layout(s, h.layout);
  const size_t total = s.size() + 8;
  s[6] = char(total & 0xff);
  s[7] = char(total >> 8);
  put_le<uint64_t>(s, checksum64(s.data(), s.size()));
  return s;
}

Result<size_t> decode_header(std::string_view v, ValueHeader& out) {
  if (v.size() < kFixedBytes + 8) return error(Errc::kCorrupt, "remote value: short header");
  if (get_le<uint32_t>(v, 0) != kValueMagic) return error(Errc::kCorrupt, "remote value: magic");
  if (get_le<uint16_t>(v, 4) != kFormatVersion)
    return error(Errc::kCorrupt,
                 "remote value: unknown format version " + std::to_string(get_le<uint16_t>(v, 4)));
  const size_t header_bytes = get_le<uint16_t>(v, 6);
  if (header_bytes < kFixedBytes + 8 || header_bytes > v.size())
    return error(Errc::kCorrupt, "remote value: header size");
  if (checksum64(v.data(), header_bytes - 8) != get_le<uint64_t>(v, header_bytes - 8))
    return error(Errc::kCorrupt, "remote value: header checksum");
  out.key.lo = get_le<uint64_t>(v, 8);
  out.key.hi = get_le<uint64_t>(v, 16);
  const uint8_t compression = get_le<uint8_t>(v, 24);
  if (compression > uint8_t(Compression::kZstdPlanes2))
    return error(Errc::kCorrupt, "remote value: unknown compression");
  out.compression = Compression(compression);
  const size_t ns_len = get_le<uint16_t>(v, 26);
  out.parts = get_le<uint32_t>(v, 28);
  out.stored_bytes = get_le<uint64_t>(v, 32);
  out.payload_checksum = get_le<uint64_t>(v, 40);
  out.created_unix_ms = get_le<uint64_t>(v, 48);
  if (kFixedBytes + ns_len > header_bytes - 8)
    return error(Errc::kCorrupt, "remote value: namespace overruns the header");
  out.ns.assign(v.substr(kFixedBytes, ns_len));
  const std::string_view layout =
      v.substr(kFixedBytes + ns_len, header_bytes - 8 - kFixedBytes - ns_len);
  auto used = decode_layout(layout, out.layout);
  if (!used) return error(Errc::kCorrupt, "remote value: " + used.status().message());
  if (*used != layout.size()) return error(Errc::kCorrupt, "remote value: bytes after the layout");
  if (out.parts < 1 || out.parts > kMaxParts || out.stored_bytes > kMaxBlockBytes)
    return error(Errc::kCorrupt, "remote value: part count or size out of range");
  if (out.compression == Compression::kNone && out.stored_bytes != out.layout.total_bytes)
    return error(Errc::kCorrupt, "remote value: stored size differs from the layout's");
  if (Status st = check_stored_layout(out.layout); !st)
    return error(Errc::kCorrupt, "remote value: " + st.message());
  return header_bytes;
}

std::string encode_part_header(uint32_t part, uint64_t payload_checksum) {
  std::string s;
  s.reserve(kPartHeaderBytes);
  put_le<uint32_t>(s, kPartMagic);
  put_le<uint16_t>(s, kFormatVersion);
  put_le<uint16_t>(s, 0);
  put_le<uint32_t>(s, part);
  put_le<uint32_t>(s, 0);
  put_le<uint64_t>(s, payload_checksum);
  return s;
}

Status check_part_header(std::string_view v, uint32_t part, uint64_t payload_checksum) {
  if (v.size() < kPartHeaderBytes || get_le<uint32_t>(v, 0) != kPartMagic ||
      get_le<uint16_t>(v, 4) != kFormatVersion || get_le<uint32_t>(v, 8) != part ||
      get_le<uint64_t>(v, 16) != payload_checksum)
    return error(Errc::kCorrupt, "remote value: part " + std::to_string(part) +
                                     " is missing or belongs to another copy");
  return {};
}

Status check_stored_layout(const BlockLayout& layout) {
  if (layout.tensors.empty() || layout.tensors.size() > kMaxTensorsPerBlock)
    return error(Errc::kCorrupt, "layout: tensor count");
  if (layout.total_bytes > kMaxBlockBytes) return error(Errc::kCorrupt, "layout: block size");
  for (const TensorLayout& t : layout.tensors) {
    if (t.name.empty() || t.name.size() > kMaxTensorNameBytes)
      return error(Errc::kCorrupt, "layout: tensor name");
    if (uint8_t(t.dtype) > uint8_t(DType::kI64) || uint8_t(t.codec) > uint8_t(Codec::kNf4) ||
        uint8_t(t.nf4_layout) > uint8_t(Nf4Layout::kColumnBlocks))
      return error(Errc::kCorrupt, "layout: tensor '" + t.name + "': unknown dtype or codec");
    if (t.shape.empty() || t.shape.size() > kMaxTensorRank ||
        (!t.strides.empty() && t.strides.size() != t.shape.size()))
      return error(Errc::kCorrupt, "layout: tensor '" + t.name + "': rank");
    uint64_t elements = 1;
    for (uint64_t d : t.shape) {
      if (d == 0 || d > kMaxBlockBytes || elements > kMaxBlockBytes / d)
        return error(Errc::kCorrupt, "layout: tensor '" + t.name + "': shape");
      elements *= d;
    }
    if (t.raw_bytes != elements * dtype_size(t.dtype))
      return error(Errc::kCorrupt, "layout: tensor '" + t.name + "': raw size");
    if (t.codec == Codec::kRaw && t.bytes != t.raw_bytes)
      return error(Errc::kCorrupt, "layout: tensor '" + t.name + "': stored size");
    if (t.offset > layout.total_bytes || t.bytes > layout.total_bytes - t.offset)
      return error(Errc::kCorrupt, "layout: tensor '" + t.name + "' outside the block");
  }
  return {};
}

Status verify_tensors(const BlockLayout& layout, std::span<const std::byte> payload) {
  if (payload.size() < layout.total_bytes) return error(Errc::kCorrupt, "payload: short");
  for (const TensorLayout& t : layout.tensors)
    if (checksum64(payload.data() + t.offset, t.bytes) != t.checksum)
      return error(Errc::kCorrupt, "payload: tensor '" + t.name + "' checksum");
  return {};
}

}  // namespace kvtier::remote
