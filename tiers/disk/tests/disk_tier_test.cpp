// Disk tier unit tests: round trips on every backend, compression, restart, crash recovery,
// corruption, io_uring refusal, region eviction, admin calls.  Faults: disk_fault_test.cpp.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "tiers/disk/disk_index.h"
#include "tests/testing/devices/memory_device.h"
#include "tiers/disk/tests/disk_test_util.h"

using namespace kvtier;
using namespace kvtier::testing;

namespace {

DiskOptions small_options(const std::filesystem::path& dir, uint64_t region = 4ull << 20,
                          uint64_t capacity = 1ull << 30) {
  DiskOptions o;
  o.dir = dir;
  o.region_bytes = region;
  o.capacity_bytes = capacity;
  o.index_map_bytes = 1ull << 30;
  o.durable = false;  // fsyncs dominate test time; crash recovery is simulated, not real
  return o;
}

std::unique_ptr<DiskTier> open_tier(Backend& b, const DiskOptions& o) {
  auto dev = b.make(o.dir);
  if (!dev) return nullptr;
  auto t = DiskTier::open(o, std::move(dev));
  REQUIRE(t.is_ok());
  return std::move(t.value());
}

}  // namespace

TEST_CASE("round trip on every backend, 4 KiB to 32 MiB, compressed and not") {
  Backend b{GENERATE(as<std::string>{}, "io_uring", "threads", "memory")};
  auto o = small_options(scratch_dir("rt-" + b.name), 64ull << 20);
  auto t = open_tier(b, o);
  if (!t) return;
  INFO(t->backend());
  const std::vector<size_t> sizes = {4096, 5000, 65536, (1u << 20) + 6, 2u << 20, 32u << 20};
  uint64_t i = 0;
  for (bool compress : {false, true})
    for (size_t n : sizes) {
      auto data = (i % 2) ? normal_fp16(n, i) : random_bytes(n, i);
      auto layout = layout_of(n, n % 2 ? DType::kU8 : DType::kF16);
      REQUIRE(put(*t, key_of(i), layout, data, compress).is_ok());
      std::vector<std::byte> back;
      REQUIRE(get(*t, key_of(i), back).is_ok());
      CHECK(back == data);
      auto e = t->find("m", key_of(i));
      REQUIRE(e);
      CHECK(e->payload_bytes == n);
      CHECK(e->layout.tensors.size() == 1);
      CHECK(e->layout.tensors[0].shape == layout.tensors[0].shape);
      ++i;
    }
  auto u = t->disk_usage();
  CHECK(u.blocks == i);
  CHECK(u.writes == i);
  CHECK(u.reads == i);
  CHECK(u.corrupt_dropped == 0);
}

TEST_CASE("fp16 byte planes compress, NF4 and the no-compress flag store raw") {
  Backend b{"memory"};
  auto t = open_tier(b, small_options(scratch_dir("zstd")));
  const size_t n = 1u << 20;
  auto fp16 = normal_fp16(n, 7);
  REQUIRE(put(*t, key_of(1), layout_of(n), fp16, true).is_ok());
  auto e = t->find("m", key_of(1));
  REQUIRE(e);
  CHECK(e->compression == 1);
  CHECK(e->disk_bytes < n * 0.9);  // ~1.18x on N(0,1) fp16 with split planes
  REQUIRE(put(*t, key_of(2), layout_of(n, DType::kF16, Codec::kNf4), fp16, true).is_ok());
  CHECK(t->find("m", key_of(2))->compression == 0);
  CHECK(t->find("m", key_of(2))->disk_bytes == n);
  REQUIRE(put(*t, key_of(3), layout_of(n), fp16, false).is_ok());
  CHECK(t->find("m", key_of(3))->compression == 0);
  REQUIRE(put(*t, key_of(4), layout_of(n), random_bytes(n, 4), true).is_ok());  // incompressible
  CHECK(t->find("m", key_of(4))->compression == 0);
  std::vector<std::byte> back;
  REQUIRE(get(*t, key_of(1), back).is_ok());
  CHECK(back == fp16);
}

TEST_CASE("duplicates, queue limit and bad arguments are refused at write()") {
  Backend b{"threads"};
  auto o = small_options(scratch_dir("limits"));
  o.write_queue_bytes = 1u << 20;
  auto t = open_tier(b, o);
  auto d = random_bytes(1u << 20, 1);
  REQUIRE(put(*t, key_of(1), layout_of(d.size()), d).is_ok());
  CHECK(put(*t, key_of(1), layout_of(d.size()), d).code() == Errc::kAlreadyExists);
  CHECK(put(*t, key_of(1), layout_of(d.size()), d, true, "other-ns").is_ok());
  CHECK(put(*t, key_of(2), layout_of(100), d).code() == Errc::kInvalidArgument);
  auto big = random_bytes(4u << 20, 2);
  CHECK(put(*t, key_of(3), layout_of(big.size()), big).code() == Errc::kInvalidArgument);
  // Fill the queue, then one more is kLimit (done not called).
  std::atomic<int> done{0};
  Status first = t->write("m", key_of(10), layout_of(d.size()), d, false, [&](Status) { ++done; });
  Status second = t->write("m", key_of(11), layout_of(d.size()), d, false, [&](Status) { ++done; });
  CHECK(first.is_ok());
  CHECK((second.is_ok() || second.code() == Errc::kLimit));
  t->flush();
  CHECK(done == (second.is_ok() ? 2 : 1));
}

TEST_CASE("warm restart serves the index at once") {
  Backend b{GENERATE(as<std::string>{}, "io_uring", "threads", "memory")};
  auto o = small_options(scratch_dir("restart-" + b.name), 1u << 20);
  std::vector<std::vector<std::byte>> data;
  {
    auto t = open_tier(b, o);
    if (!t) return;
    for (uint64_t i = 0; i < 20; ++i) {
      data.push_back(normal_fp16(100000 + i * 4096, i));
      REQUIRE(t->write("m", key_of(i), layout_of(data[i].size()), data[i], i % 2, {}).is_ok());
    }
  }  // the destructor flushes
  auto t = open_tier(b, o);
  auto u = t->disk_usage();
  CHECK(u.blocks == 20);
  CHECK(u.dropped_at_open == 0);
  for (uint64_t i = 0; i < 20; ++i) {
    std::vector<std::byte> back;
    REQUIRE(get(*t, key_of(i), back).is_ok());
    CHECK(back == data[i]);
  }
  // New writes go to a fresh region, never appending to the old ones.
  REQUIRE(put(*t, key_of(100), layout_of(8192), random_bytes(8192, 9)).is_ok());
  CHECK(t->find("m", key_of(100))->region > t->find("m", key_of(19))->region);
}

TEST_CASE("crash mid-region: orphan regions and truncated tails are dropped at open") {
  Backend b{GENERATE(as<std::string>{}, "threads", "memory")};
  auto o = small_options(scratch_dir("crash-" + b.name), 4u << 20);
  uint32_t region = 0;
  uint64_t cut = 0;
  {
    auto t = open_tier(b, o);
    for (uint64_t i = 0; i < 8; ++i)
      REQUIRE(put(*t, key_of(i), layout_of(256u << 10), random_bytes(256u << 10, i)).is_ok());
    region = t->find("m", key_of(0))->region;
    cut = t->find("m", key_of(5))->offset + 4096;  // keys 5, 6, 7 lose their bytes
  }
  // A payload written with no index commit: a region file the index never heard of.
  auto dev = b.make(o.dir);
  REQUIRE(dev->create_region(region + 7, 0).is_ok());
  AlignedBuffer junk(1u << 20);
  std::memset(junk.data(), 0x5a, junk.size());
  REQUIRE(write_sync(*dev, region + 7, 0, junk.span()).is_ok());
  dev.reset();
  if (b.name == "memory")
    truncate_memory_region(*b.mem, region, cut);
  else {
    char name[32];
    std::snprintf(name, sizeof name, "region-%08x.kvr", region);
    std::filesystem::resize_file(o.dir / name, cut);
  }
  auto t = open_tier(b, o);
  auto u = t->disk_usage();
  CHECK(u.regions_dropped_at_open == 1);
  CHECK(u.dropped_at_open == 3);
  CHECK(u.blocks == 5);
  for (uint64_t i = 0; i < 8; ++i) CHECK(t->find("m", key_of(i)).has_value() == (i < 5));
  std::vector<std::byte> back;
  CHECK(get(*t, key_of(4), back).is_ok());
  CHECK(back == random_bytes(256u << 10, 4));
}

// Found writing the disk harness (fuzz/fuzz_disk.cpp, docs/fuzzing.md): offset + disk_bytes
// wrapped past 2^64 and passed the open-time bound, and verify() then allocated 2^64 bytes.
TEST_CASE("index entries whose extent wraps or whose payload exceeds a region are dropped") {
  Backend b{"memory"};
  auto o = small_options(scratch_dir("wrap"), 1u << 20);
  {
    auto t = open_tier(b, o);
    for (uint64_t i = 0; i < 3; ++i)
      REQUIRE(put(*t, key_of(i), layout_of(8192), random_bytes(8192, i)).is_ok());
  }
  {
    auto ix = DiskIndex::open(o.dir / "index", o.index_map_bytes, false);
    REQUIRE(ix.is_ok());
    auto txn = (*ix)->begin_write();
    REQUIRE(txn.is_ok());
    for (uint64_t i = 0; i < 2; ++i) {
      const std::string k = encode_block_key("m", key_of(i));
      DiskEntry e;
      REQUIRE(decode_entry(k, *txn->get_block(k), e).is_ok());
      if (i == 0) e.disk_bytes = e.payload_bytes = ~uint64_t{0} - e.offset + 1;  // wraps to 0
      if (i == 1) e.payload_bytes = 1ull << 50;
      REQUIRE(txn->put_block(k, encode_entry(e), false).is_ok());
    }
    REQUIRE(txn->commit().is_ok());
  }
  auto t = open_tier(b, o);
  CHECK(t->disk_usage().dropped_at_open == 2);
  CHECK(!t->find("m", key_of(0)).has_value());
  CHECK(!t->find("m", key_of(1)).has_value());
  auto v = t->verify();
  REQUIRE(v.is_ok());
  CHECK(v->checked == 1);
  CHECK(v->corrupt == 0);
}

TEST_CASE("flipped bytes: verify and read drop the corrupt blocks, the rest are served") {
  Backend b{"threads"};
  auto o = small_options(scratch_dir("flip"), 4u << 20);
  std::vector<DiskEntry> es;
  {
    auto t = open_tier(b, o);
    for (uint64_t i = 0; i < 6; ++i) {
      REQUIRE(put(*t, key_of(i), layout_of(64u << 10), normal_fp16(64u << 10, i)).is_ok());
      es.push_back(*t->find("m", key_of(i)));
    }
  }
  char name[32];
  std::snprintf(name, sizeof name, "region-%08x.kvr", es[0].region);
  int fd = ::open((o.dir / name).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  for (int victim : {1, 4}) {
    char c = 0;
    REQUIRE(::pread(fd, &c, 1, es[victim].offset + 100) == 1);
    c ^= 0x40;
    REQUIRE(::pwrite(fd, &c, 1, es[victim].offset + 100) == 1);
  }
  ::close(fd);
  auto t = open_tier(b, o);
  std::vector<std::byte> back;
  CHECK(get(*t, key_of(1), back).code() == Errc::kCorrupt);  // read detects and drops
  CHECK_FALSE(t->find("m", key_of(1)));
  std::vector<DiskTier::Progress> seen;
  auto rep = t->verify([&](DiskTier::Progress p) { seen.push_back(p); });
  REQUIRE(rep.is_ok());
  CHECK(rep->checked == 5);
  CHECK(rep->corrupt == 1);
  CHECK(seen.size() == 5);
  CHECK(seen.back().done == 5);
  CHECK(t->disk_usage().corrupt_dropped == 2);
  CHECK(t->disk_usage().blocks == 4);
  for (uint64_t i : {0, 2, 3, 5}) {
    REQUIRE(get(*t, key_of(i), back).is_ok());
    CHECK(back == normal_fp16(64u << 10, i));
  }
}

TEST_CASE("io_uring refused: the thread-pool fallback runs and says why") {
  auto o = small_options(scratch_dir("refused"));
  o.refuse_io_uring = true;
  auto t = DiskTier::open(o);
  REQUIRE(t.is_ok());
  auto& tier = *t.value();
  CHECK(tier.backend().find("threads (io_uring refused: EPERM") == 0);
  for (uint64_t i = 0; i < 8; ++i) {
    auto d = normal_fp16(4096u << (i % 6), i);
    REQUIRE(put(tier, key_of(i), layout_of(d.size()), d).is_ok());
    std::vector<std::byte> back;
    REQUIRE(get(tier, key_of(i), back).is_ok());
    CHECK(back == d);
  }
  auto plain = DiskTier::open(small_options(scratch_dir("auto")));
  REQUIRE(plain.is_ok());
  INFO("default backend: " << plain.value()->backend());
  CHECK(!plain.value()->backend().empty());
}

namespace {
// Holds every read until the test opens the gate.
class GateDevice final : public Device {
 public:
  explicit GateDevice(std::unique_ptr<Device> in) : in_(std::move(in)) {}
  std::string describe() const override { return "gate"; }
  Status create_region(uint32_t r, uint64_t b) override { return in_->create_region(r, b); }
  Status open_region(uint32_t r) override { return in_->open_region(r); }
  Status remove_region(uint32_t r) override { return in_->remove_region(r); }
  std::vector<uint32_t> list_regions() override { return in_->list_regions(); }
  Result<uint64_t> region_size(uint32_t r) override { return in_->region_size(r); }
  Status sync(uint32_t r) override { return in_->sync(r); }
  void write(uint32_t r, uint64_t o, std::span<const std::byte> b, IoDone d) override {
    in_->write(r, o, b, std::move(d));
  }
  void read(uint32_t r, uint64_t o, std::span<std::byte> b, IoDone d) override {
    std::lock_guard lock(mu);
    if (closed)
      held.push_back([=, this, d = std::move(d)]() mutable { in_->read(r, o, b, d); });
    else
      in_->read(r, o, b, std::move(d));
  }
  void open_gate() {
    std::vector<std::function<void()>> h;
    {
      std::lock_guard lock(mu);
      closed = false;
      h.swap(held);
    }
    for (auto& f : h) f();
  }
  std::mutex mu;
  bool closed = true;
  std::vector<std::function<void()>> held;
  std::unique_ptr<Device> in_;
};
}  // namespace

TEST_CASE("region eviction: oldest region reclaimed FIFO, not while a read is in flight") {
  auto o = small_options(scratch_dir("evict"), 1u << 20, 3u << 20);  // three regions
  auto mem = make_memory_disk();
  auto gate_owner = std::make_unique<GateDevice>(make_memory_device(mem));
  GateDevice* gate = gate_owner.get();
  auto t = std::move(DiskTier::open(o, std::move(gate_owner)).value());
  const size_t n = 300u << 10;  // three per region
  for (uint64_t i = 0; i < 9; ++i)
    REQUIRE(put(*t, key_of(i), layout_of(n), random_bytes(n, i)).is_ok());
  CHECK(t->disk_usage().regions == 3);
  auto first = *t->find("m", key_of(0));
  std::vector<std::byte> back(n);
  std::promise<Status> rd;
  t->read(first, back, [&](Status s) { rd.set_value(s); });  // held at the gate
  std::promise<Status> wr;
  REQUIRE(t->write("m", key_of(9), layout_of(n), random_bytes(n, 9), false, [&](Status s) {
             wr.set_value(s);
           }).is_ok());
  auto wf = wr.get_future();
  CHECK(wf.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
  CHECK(t->find("m", key_of(0)).has_value());  // not reclaimed under the reader
  gate->open_gate();
  CHECK(rd.get_future().get().is_ok());
  CHECK(back == random_bytes(n, 0));
  CHECK(wf.get().is_ok());
  auto u = t->disk_usage();
  CHECK(u.regions_reclaimed == 1);
  CHECK(u.regions == 3);
  CHECK_FALSE(t->find("m", key_of(0)));
  CHECK_FALSE(t->find("m", key_of(2)));
  CHECK(t->find("m", key_of(3)));
  std::promise<Status> late;
  t->read(first, back, [&](Status s) { late.set_value(s); });
  CHECK(late.get_future().get().code() == Errc::kNotFound);
}

TEST_CASE("remove, evict_matching, visit, compact") {
  Backend b{"memory"};
  auto t = open_tier(b, small_options(scratch_dir("admin"), 1u << 20));
  const size_t n = 240u << 10;  // four per region
  for (uint64_t i = 0; i < 16; ++i)
    REQUIRE(put(*t, key_of(i), layout_of(n), normal_fp16(n, i), false, i < 8 ? "a" : "b").is_ok());
  CHECK(t->remove("a", key_of(0)).is_ok());
  CHECK(t->remove("a", key_of(0)).code() == Errc::kNotFound);
  CHECK(t->evict_entries([](const DiskEntry& e) { return e.ns == "b" && e.key.hi % 2; }) == 4);
  uint64_t visited = 0;
  t->visit([&](const DiskEntry&) { ++visited; });
  CHECK(visited == 11);
  // Leave regions sparse: drop three of every four in the first two regions.
  for (uint64_t i : {1, 2, 4, 5, 6}) CHECK(t->remove("a", key_of(i)).is_ok());
  uint64_t regions_before = t->disk_usage().regions;
  auto rep = t->compact();
  REQUIRE(rep.is_ok());
  CHECK(rep->regions_freed >= 1);
  CHECK(rep->moved >= 1);
  CHECK(t->disk_usage().regions < regions_before + 1);
  for (uint64_t i : {3, 7, 8, 10, 12, 14}) {
    std::vector<std::byte> back;
    REQUIRE(get(*t, key_of(i), back, i < 8 ? "a" : "b").is_ok());
    CHECK(back == normal_fp16(n, i));
  }
  CHECK(t->disk_usage().blocks == 6);
}

TEST_CASE("the store interface: ids, locate and versioned read, remove, evict by id") {
  Backend b{"memory"};
  auto t = open_tier(b, small_options(scratch_dir("store"), 1u << 20));
  StoreTier& s = *t;
  const size_t n = 64u << 10;
  t->name_namespace(0, "a");
  t->name_namespace(1, "b");
  for (uint64_t i = 0; i < 4; ++i) {
    std::promise<Status> p;
    auto f = p.get_future();
    const NsKey id{uint32_t(i % 2), key_of(i)};
    REQUIRE(s.write(id, layout_of(n), normal_fp16(n, i), true, [&](Status st) {
               p.set_value(st);
             }).is_ok());
    REQUIRE(f.get().is_ok());
  }
  // A namespace this process never named: written by name, reported as kUnnamedNamespace.
  REQUIRE(put(*t, key_of(9), layout_of(n), normal_fp16(n, 9), false, "old").is_ok());
  CHECK(s.kind() == TierKind::kDisk);
  CHECK(s.durable());
  CHECK(s.contains(NsKey{0, key_of(0)}));
  CHECK_FALSE(s.contains(NsKey{1, key_of(0)}));  // another namespace's key
  CHECK_FALSE(s.contains(NsKey{7, key_of(0)}));  // an id without a name finds nothing
  CHECK(s.usage().blocks == 5);

  auto where = s.locate(NsKey{1, key_of(1)});
  REQUIRE(where);
  CHECK(where->payload_bytes == n);
  std::vector<std::byte> back(n);
  auto read = [&](const StoredBlock& blk, std::span<std::byte> dst) {
    std::promise<Status> p;
    auto f = p.get_future();
    s.read(blk, dst, [&](Status st) { p.set_value(st); });
    return f.get();
  };
  REQUIRE(read(*where, back).is_ok());
  CHECK(back == normal_fp16(n, 1));
  CHECK(read(*where, std::span(back).first(n / 2)).code() == Errc::kInvalidArgument);
  // Another copy (another version) is never read in place of the one located.
  StoredBlock other = *where;
  other.version ^= 1;
  CHECK(read(other, back).code() == Errc::kNotFound);

  CHECK(s.remove(NsKey{0, key_of(0)}) == RemoveOutcome::kRemoved);
  CHECK(s.remove(NsKey{0, key_of(0)}) == RemoveOutcome::kNotFound);
  CHECK(read(*where, back).is_ok());  // untouched by the other namespace's remove

  std::vector<NsKey> seen;
  auto c = s.evict_matching([&](const NsKey& id) {
    seen.push_back(id);
    return id.ns == 1 || id.ns == kUnnamedNamespace;
  });
  CHECK(c.evicted == 3);  // b's two blocks and the unnamed one
  CHECK(c.bytes > 0);
  CHECK(seen.size() == 4);
  CHECK(s.contains(NsKey{0, key_of(2)}));
  CHECK_FALSE(s.contains(NsKey{1, key_of(1)}));
  CHECK_FALSE(t->find("old", key_of(9)).has_value());
  CHECK(read(*where, back).code() == Errc::kNotFound);
}
