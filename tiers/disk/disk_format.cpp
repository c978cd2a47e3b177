// Encodings of docs/disk.md (format version 1) and plane-split zstd.
#include "tiers/disk/disk_format.h"

#include <zstd.h>

#include <chrono>
#include <cstring>

#include "tiers/disk/disk_tier.h"

namespace kvtier {
namespace {

template <typename T>
void put_le(std::string& s, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) s.push_back(char(uint64_t(v) >> (8 * i)));
}
template <typename T>
void put_be(std::string& s, T v) {
  for (size_t i = sizeof(T); i-- > 0;) s.push_back(char(uint64_t(v) >> (8 * i)));
}

// Bounds-checked little-endian reader; ok() turns false on the first overrun.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  T le() {
    if (pos_ + sizeof(T) > s_.size()) {
      bad_ = true;
      return T{};
    }
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(uint8_t(s_[pos_ + i])) << (8 * i);
    pos_ += sizeof(T);
    return T(v);
  }
  std::string str(size_t n) {
    if (pos_ + n > s_.size()) {
      bad_ = true;
      return {};
    }
    std::string out(s_.substr(pos_, n));
    pos_ += n;
    return out;
  }
  bool ok() const { return !bad_; }
  size_t pos() const { return pos_; }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  bool bad_ = false;
};

// The tensors of an encoded layout (after its total_bytes): count, then each tensor.
void read_tensors(Reader& r, BlockLayout& layout) {
  uint16_t n = r.le<uint16_t>();
  layout.tensors.clear();
  layout.tensors.reserve(std::min<uint16_t>(n, kMaxTensorsPerBlock));
  for (uint16_t i = 0; i < n && r.ok(); ++i) {
    TensorLayout t;
    t.name = r.str(r.le<uint8_t>());
    t.dtype = DType(r.le<uint8_t>());
    t.codec = Codec(r.le<uint8_t>());
    t.nf4_layout = Nf4Layout(r.le<uint8_t>());
    uint8_t rank = r.le<uint8_t>();
    for (uint8_t d = 0; d < rank && r.ok(); ++d) t.shape.push_back(r.le<uint64_t>());
    uint8_t ns = r.le<uint8_t>();
    for (uint8_t d = 0; d < ns && r.ok(); ++d) t.strides.push_back(r.le<int64_t>());
    t.offset = r.le<uint64_t>();
    t.bytes = r.le<uint64_t>();
    t.raw_bytes = r.le<uint64_t>();
    t.checksum = r.le<uint64_t>();
    layout.tensors.push_back(std::move(t));
  }
}

constexpr char kRegionMagic[8] = {'K', 'V', 'T', 'R', 'E', 'G', 'N', '1'};
constexpr size_t kEntryFixedBytes = 58;

}  // namespace

uint64_t now_unix_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string encode_block_key(std::string_view ns, const BlockKey& key) {
  std::string s;
  s.reserve(16 + ns.size());
  put_be(s, key.hi);
  put_be(s, key.lo);
  s.append(ns);
  return s;
}
std::string encode_region_offset(uint32_t region, uint64_t offset) {
  std::string s;
  put_be(s, region);
  put_be(s, offset);
  return s;
}
std::string encode_region_id(uint32_t region) {
  std::string s;
  put_be(s, region);
  return s;
}
uint32_t decode_region_key(std::string_view k) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4 && i < k.size(); ++i) v = (v << 8) | uint8_t(k[i]);
  return v;
}

void encode_layout(std::string& s, const BlockLayout& layout) {
  put_le<uint64_t>(s, layout.total_bytes);
  put_le<uint16_t>(s, uint16_t(layout.tensors.size()));
  for (const TensorLayout& t : layout.tensors) {
    put_le<uint8_t>(s, uint8_t(std::min<size_t>(t.name.size(), 255)));
    s.append(t.name.substr(0, 255));
    put_le<uint8_t>(s, uint8_t(t.dtype));
    put_le<uint8_t>(s, uint8_t(t.codec));
    put_le<uint8_t>(s, uint8_t(t.nf4_layout));
    put_le<uint8_t>(s, uint8_t(t.shape.size()));
    for (uint64_t d : t.shape) put_le<uint64_t>(s, d);
    put_le<uint8_t>(s, uint8_t(t.strides.size()));
    for (int64_t d : t.strides) put_le<int64_t>(s, d);
    put_le<uint64_t>(s, t.offset);
    put_le<uint64_t>(s, t.bytes);
    put_le<uint64_t>(s, t.raw_bytes);
    put_le<uint64_t>(s, t.checksum);
  }
}

Result<size_t> decode_layout(std::string_view v, BlockLayout& out) {
  Reader r(v);
  out.total_bytes = r.le<uint64_t>();
  read_tensors(r, out);
  if (!r.ok()) return error(Errc::kCorrupt, "truncated layout");
  return r.pos();
}

std::string encode_entry(const DiskEntry& e) {
  std::string s;
  s.reserve(kEntryFixedBytes + 64 * e.layout.tensors.size());
  put_le<uint8_t>(s, 1);
  put_le<uint8_t>(s, e.compression);
  put_le<uint16_t>(s, 0);
  put_le<uint32_t>(s, e.region);
  put_le<uint64_t>(s, e.offset);
  put_le<uint64_t>(s, e.disk_bytes);
  put_le<uint64_t>(s, e.payload_bytes);
  put_le<uint64_t>(s, e.checksum);
  put_le<uint64_t>(s, e.last_access_unix_ms);
  encode_layout(s, e.layout);
  return s;
}

Status decode_entry_fixed(std::string_view v, DiskEntry& out) {
  Reader r(v);
  if (r.le<uint8_t>() != 1) return error(Errc::kCorrupt, "disk index: unknown record version");
  out.compression = r.le<uint8_t>();
  r.le<uint16_t>();
  out.region = r.le<uint32_t>();
  out.offset = r.le<uint64_t>();
  out.disk_bytes = r.le<uint64_t>();
  out.payload_bytes = r.le<uint64_t>();
  out.checksum = r.le<uint64_t>();
  out.last_access_unix_ms = r.le<uint64_t>();
  out.layout.total_bytes = r.le<uint64_t>();
  if (!r.ok()) return error(Errc::kCorrupt, "disk index: short record");
  return {};
}

void patch_last_access(std::string& v, uint64_t unix_ms) {
  if (v.size() < 48) return;
  for (size_t i = 0; i < 8; ++i) v[40 + i] = char(unix_ms >> (8 * i));
}

Status decode_entry(std::string_view k, std::string_view v, DiskEntry& out) {
  if (k.size() < 16) return error(Errc::kCorrupt, "disk index: short key");
  Reader kr(k);
  uint64_t hi = 0, lo = 0;
  for (size_t i = 0; i < 8; ++i) hi = (hi << 8) | uint8_t(k[i]);
  for (size_t i = 8; i < 16; ++i) lo = (lo << 8) | uint8_t(k[i]);
  out.key = {lo, hi};
  out.ns = std::string(k.substr(16));
  if (Status s = decode_entry_fixed(v, out); !s) return s;
  Reader r(v.substr(kEntryFixedBytes - 2));
  read_tensors(r, out.layout);
  if (!r.ok()) return error(Errc::kCorrupt, "disk index: truncated layout");
  return {};
}

std::string encode_region_record(const RegionRecord& rec) {
  std::string s;
  put_le<uint32_t>(s, kDiskFormatVersion);
  put_le<uint8_t>(s, rec.state);
  put_le<uint8_t>(s, 0);
  put_le<uint16_t>(s, 0);
  put_le<uint64_t>(s, rec.durable_end);
  put_le<uint64_t>(s, rec.created_unix_ms);
  return s;
}
Status decode_region_record(std::string_view v, RegionRecord& out) {
  Reader r(v);
  if (r.le<uint32_t>() != kDiskFormatVersion) return error(Errc::kCorrupt, "region record version");
  out.state = r.le<uint8_t>();
  r.le<uint8_t>();
  r.le<uint16_t>();
  out.durable_end = r.le<uint64_t>();
  out.created_unix_ms = r.le<uint64_t>();
  return r.ok() ? Status() : error(Errc::kCorrupt, "short region record");
}

// Header: magic[8], version u32, region u32, region_bytes u64, created_unix_ms u64, zero
// padding to 4088, XXH3-64 of bytes [0, 4088) at 4088.
void write_region_header(std::span<std::byte> page, uint32_t region, uint64_t region_bytes,
                         uint64_t created_unix_ms) {
  std::memset(page.data(), 0, kRegionHeaderBytes);
  std::string s(kRegionMagic, 8);
  put_le<uint32_t>(s, kDiskFormatVersion);
  put_le<uint32_t>(s, region);
  put_le<uint64_t>(s, region_bytes);
  put_le<uint64_t>(s, created_unix_ms);
  std::memcpy(page.data(), s.data(), s.size());
  uint64_t sum = checksum64(page.data(), kRegionHeaderBytes - 8);
  for (size_t i = 0; i < 8; ++i) page[kRegionHeaderBytes - 8 + i] = std::byte(sum >> (8 * i));
}
Status check_region_header(std::span<const std::byte> page, uint32_t region) {
  if (page.size() < kRegionHeaderBytes) return error(Errc::kCorrupt, "region header short");
  std::string_view s(reinterpret_cast<const char*>(page.data()), kRegionHeaderBytes);
  Reader r(s.substr(kRegionHeaderBytes - 8));
  if (s.substr(0, 8) != std::string_view(kRegionMagic, 8) ||
      r.le<uint64_t>() != checksum64(page.data(), kRegionHeaderBytes - 8))
    return error(Errc::kCorrupt, "region header: bad magic or checksum");
  Reader h(s.substr(8));
  if (h.le<uint32_t>() != kDiskFormatVersion || h.le<uint32_t>() != region)
    return error(Errc::kCorrupt, "region header: wrong version or region id");
  return {};
}

bool compressible(const BlockLayout& layout, size_t payload_bytes) {
  if (layout.tensors.empty() || payload_bytes % 2 != 0 || payload_bytes < 2 * kDiskAlign)
    return false;
  for (const TensorLayout& t : layout.tensors)
    if (t.codec != Codec::kRaw || (t.dtype != DType::kF16 && t.dtype != DType::kBF16)) return false;
  return true;
}

namespace {
ZSTD_CCtx* cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> c(ZSTD_createCCtx(),
                                                                    ZSTD_freeCCtx);
  return c.get();
}
ZSTD_DCtx* dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> d(ZSTD_createDCtx(),
                                                                    ZSTD_freeDCtx);
  return d.get();
}
}  // namespace

bool compress_planes2(std::span<const std::byte> in, std::vector<std::byte>& out) {
  const size_t n = in.size() / 2;
  std::vector<std::byte> planes(in.size());
  const auto* src = reinterpret_cast<const uint8_t*>(in.data());
  auto* lo = reinterpret_cast<uint8_t*>(planes.data());
  uint8_t* hi = lo + n;
  for (size_t i = 0; i < n; ++i) {
    lo[i] = src[2 * i];
    hi[i] = src[2 * i + 1];
  }
  out.resize(ZSTD_compressBound(in.size()));
  size_t c = ZSTD_compressCCtx(cctx(), out.data(), out.size(), planes.data(), planes.size(), 1);
  if (ZSTD_isError(c)) return false;
  out.resize(c);
  return align_up(c, kDiskAlign) < align_up(in.size(), kDiskAlign);
}

Status decompress_planes2(std::span<const std::byte> in, std::span<std::byte> out) {
  std::vector<std::byte> planes(out.size());
  size_t d = ZSTD_decompressDCtx(dctx(), planes.data(), planes.size(), in.data(), in.size());
  if (ZSTD_isError(d) || d != out.size() || d % 2 != 0)
    return error(Errc::kCorrupt, "zstd: payload does not decompress to its size");
  const size_t n = d / 2;
  const auto* lo = reinterpret_cast<const uint8_t*>(planes.data());
  const uint8_t* hi = lo + n;
  auto* dst = reinterpret_cast<uint8_t*>(out.data());
  for (size_t i = 0; i < n; ++i) {
    dst[2 * i] = lo[i];
    dst[2 * i + 1] = hi[i];
  }
  return {};
}

}  // namespace kvtier
