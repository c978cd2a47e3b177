// Harness (d): the disk tier's on-disk formats as open() and verify() read them (docs/disk.md):
// LMDB values ("blocks" entries, "regions" records), region file headers and payloads.
//
// Two kinds of input, chosen by the first byte:
//   - the decoders alone on arbitrary bytes: decode_entry (and the fixed part), region
//     records, region headers, zstd plane payloads.  An entry that decodes must encode and
//     decode back to itself.
//   - a whole disk tier: region files (headers valid or patched, payloads from the input) on
//     the in-memory device, and an LMDB index (in a tmpfs directory) holding region records
//     and block entries, well-formed with hostile fields (offsets, sizes, compression,
//     checksums, layouts) or raw bytes; then DiskTier::open (recovery), verify() (every
//     entry read, checked and decompressed), visit/find, and compact().  Whatever the index
//     says, the tier must refuse or drop entries, never crash, read out of bounds or throw.
//
// Allocations over 1 GiB fail (return null, so operator new throws std::bad_alloc), as they
// can on a daemon's host.
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "tiers/disk/disk_format.h"
#include "tests/testing/devices/memory_device.h"
#include "tiers/disk/disk_index.h"
#include "tiers/disk/disk_tier.h"

extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=1024";
}

using namespace kvtier;

namespace {

constexpr uint64_t kRegionBytes = 64 << 10;

struct Scratch {
  std::filesystem::path dir;
  Scratch() {
    std::string tmpl = "/dev/shm/kvtier-fuzz-disk-" + std::to_string(::getpid()) + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

const std::filesystem::path& scratch() {
  static Scratch s;
  return s.dir;
}

[[noreturn]] void fail(const char* why) {
  std::fprintf(stderr, "fuzz_disk: %s\n", why);
  std::abort();
}

void decoders(FuzzedDataProvider& in) {
  const std::string k = in.ConsumeRandomLengthString(300);
  const std::string v = in.ConsumeRandomLengthString(1000);
  DiskEntry e;
  if (decode_entry(k, v, e)) {
    const std::string again = encode_entry(e);
    DiskEntry e2;
    if (!decode_entry(encode_block_key(e.ns, e.key), again, e2))
      fail("an entry does not re-decode");
    if (encode_entry(e2) != again || e2.ns != e.ns || !(e2.key == e.key))
      fail("an entry changes through encode/decode");
  }
  (void)decode_entry_fixed(v, e);
  RegionRecord rec;
  (void)decode_region_record(v, rec);
  std::string page = in.ConsumeBytesAsString(kRegionHeaderBytes);
  const uint32_t region = in.ConsumeIntegral<uint32_t>();
  if (in.ConsumeBool()) page.resize(kRegionHeaderBytes);
  (void)check_region_header({reinterpret_cast<const std::byte*>(page.data()), page.size()}, region);
  std::vector<std::byte> out(in.ConsumeIntegralInRange<size_t>(0, 1 << 16));
  const std::string z = in.ConsumeRemainingBytesAsString();
  (void)decompress_planes2({reinterpret_cast<const std::byte*>(z.data()), z.size()}, out);
}

uint64_t pick(FuzzedDataProvider& in, std::initializer_list<uint64_t> usual) {
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) return in.ConsumeIntegral<uint64_t>();
  return *(usual.begin() + in.ConsumeIntegralInRange<size_t>(0, usual.size() - 1));
}

void whole_tier(FuzzedDataProvider& in) {
  const std::filesystem::path dir = scratch() / "tier";
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir, ec);
  auto mem = make_memory_disk();
  auto dev = make_memory_device(mem);
  // Region files: a valid header (perhaps patched, or for another region id), then payload.
  std::map<uint32_t, std::vector<std::byte>> files;
  const size_t nfiles = in.ConsumeIntegralInRange<size_t>(0, 3);
  for (size_t i = 0; i < nfiles; ++i) {
    const auto id = static_cast<uint32_t>(pick(in, {0, 1, 2, 7}));
    std::vector<std::byte> bytes(kRegionHeaderBytes);
    write_region_header(bytes, in.ConsumeBool() ? id : id + 1, kRegionBytes, 1);
    const size_t patches = in.ConsumeIntegralInRange<size_t>(0, 3);
    for (size_t p = 0; p < patches; ++p)
      bytes[in.ConsumeIntegralInRange<size_t>(0, 63)] = std::byte{in.ConsumeIntegral<uint8_t>()};
    const auto payload = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 16384));
    for (uint8_t b : payload) bytes.push_back(std::byte{b});
    if (in.ConsumeBool()) bytes.resize(in.ConsumeIntegralInRange<size_t>(0, bytes.size()));
    (void)dev->create_region(id, 0);
    if (!bytes.empty()) (void)write_sync(*dev, id, 0, bytes);
    files[id] = std::move(bytes);
  }
  {
    auto ix = DiskIndex::open(dir / "index", 64 << 20, false);
    if (!ix) fail("cannot open a scratch LMDB index");
    auto txn = (*ix)->begin_write();
    if (!txn) fail("cannot begin an LMDB write");
    const size_t nrecs = in.ConsumeIntegralInRange<size_t>(0, 3);
    for (size_t i = 0; i < nrecs; ++i) {
      RegionRecord rec;
      const auto id = static_cast<uint32_t>(pick(in, {0, 1, 2, 7}));
      rec.durable_end = pick(in, {kRegionHeaderBytes, 2 * kRegionHeaderBytes,
                                  5 * kRegionHeaderBytes, kRegionBytes, 0});
      rec.created_unix_ms = 1;
      rec.state = in.ConsumeIntegral<uint8_t>();
      (void)txn->put_region(id, rec);
    }
    const size_t nentries = in.ConsumeIntegralInRange<size_t>(0, 6);
    for (size_t i = 0; i < nentries; ++i) {
      if (in.ConsumeIntegralInRange<int>(0, 5) == 0) {  // raw key and value
        const std::string k = in.ConsumeRandomLengthString(64);
        const std::string v = in.ConsumeRandomLengthString(256);
        if (!k.empty()) (void)txn->put_block(k, v, false);
        continue;
      }
      DiskEntry e;
      e.ns = in.ConsumeBool() ? "ns" : in.ConsumeRandomLengthString(8);
      e.key = BlockKey{in.ConsumeIntegralInRange<uint64_t>(0, 3), 0};
      e.region = static_cast<uint32_t>(pick(in, {0, 1, 2, 7}));
      e.offset = pick(in, {kRegionHeaderBytes, 2 * kRegionHeaderBytes, 0, 4097});
      e.disk_bytes = pick(in, {0, 1, 100, kRegionHeaderBytes, 3 * kRegionHeaderBytes,
                               ~uint64_t{0} - kRegionHeaderBytes + 1});
      e.payload_bytes = pick(in, {e.disk_bytes, 2 * e.disk_bytes, 0, 1ull << 40});
      e.compression = static_cast<uint8_t>(pick(in, {0, 1, 2}));
      e.last_access_unix_ms = 1;
      const size_t ntensors = in.ConsumeIntegralInRange<size_t>(0, 2);
      for (size_t t = 0; t < ntensors; ++t) {
        TensorLayout tl;
        tl.name = "t" + std::to_string(t);
        tl.dtype = static_cast<DType>(in.ConsumeIntegralInRange<uint8_t>(0, 6));
        tl.codec = static_cast<Codec>(in.ConsumeIntegralInRange<uint8_t>(0, 2));
        tl.shape = {pick(in, {1, 64, 100}), pick(in, {1, 64})};
        tl.offset = pick(in, {0, 64, e.payload_bytes});
        tl.bytes = pick(in, {e.payload_bytes, 128, 0});
        tl.raw_bytes = tl.bytes;
        e.layout.tensors.push_back(tl);
      }
      e.layout.total_bytes = pick(in, {e.payload_bytes, 0});
      // The checksum of what the region file holds there, when it holds anything.
      if (auto f = files.find(e.region); f != files.end() && in.ConsumeBool() &&
                                         e.offset <= f->second.size() &&
                                         e.disk_bytes <= f->second.size() - e.offset)
        e.checksum = checksum64(f->second.data() + e.offset, e.disk_bytes);
      else
        e.checksum = in.ConsumeIntegral<uint64_t>();
      const std::string k = encode_block_key(e.ns, e.key);
      (void)txn->put_block(k, encode_entry(e), false);
      if (in.ConsumeBool()) txn->put_by_region(e.region, e.offset, k);
    }
    if (!txn->commit()) fail("cannot commit to the scratch LMDB index");
  }
  DiskOptions o;
  o.dir = dir;
  o.capacity_bytes = 16 * kRegionBytes;
  o.region_bytes = kRegionBytes;
  o.write_queue_bytes = 1 << 20;
  o.threads = 1;
  o.index_map_bytes = 64 << 20;
  o.batch_bytes = 256 << 10;
  o.durable = false;
  auto tier = DiskTier::open(o, std::move(dev));
  if (!tier) return;
  (void)(*tier)->verify();
  (*tier)->visit([&](const DiskEntry& e) { (void)(*tier)->find(e.ns, e.key); });
  (void)(*tier)->usage();
  if (in.ConsumeBool()) (void)(*tier)->compact();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool())
    decoders(in);
  else
    whole_tier(in);
  return 0;
}
