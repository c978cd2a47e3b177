// The disk tier: blocks in append-only region files on NVMe, indexed by LMDB
// (docs/disk.md).  Writes are queued and return at once; a writer thread compresses and
// submits them in batches, a commit thread syncs the region and commits the batch's index
// entries in one LMDB transaction, then runs the callbacks.  LMDB is the source of truth: an
// entry is in the index only once its payload is durable, so after a crash every indexed entry
// is readable and anything else is dropped at open().
//
// Threads: writer (compress, place, submit), committer (wait for the batch's I/O, fdatasync,
// LMDB commit, done callbacks), `threads` workers (verify + decompress finished reads, read
// callbacks), plus the Device's own threads.
//
// Locking: all public methods are safe from any thread and never call user callbacks with a
// lock held.  One mutex, Impl::mu_, guards the queues, the region table (readers, live
// counters) and the counters; LMDB write transactions are serialised by LMDB itself and are
// never begun while mu_ is held (lock order: LMDB write lock, then mu_; never the reverse).
// Readers of the index (find, visit) use read-only transactions (MDB_NOTLS) and no lock.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/counters.h"
#include "common/mutex.h"
#include "kvtier/keys.h"
#include "common/layout.h"
#include "kvtier/status.h"
#include "tiers/disk/device.h"
#include "tiers/tier.h"

namespace kvtier {

struct DiskOptions {
  std::filesystem::path dir;  // created if missing; index in dir/index, regions in dir
  uint64_t capacity_bytes = 16ull << 30;
  uint64_t region_bytes = 64ull << 20;
  uint64_t write_queue_bytes = 256ull << 20;  // bytes of queued, not yet written payloads
  enum class Backend { kAuto, kIoUring, kThreads } backend = Backend::kAuto;
  bool o_direct = true;
  uint32_t threads = 2;  // thread-pool backend / compression workers
  // Additions:
  uint64_t index_map_bytes = 16ull << 30;  // LMDB map size, set once (address space only)
  uint64_t batch_bytes = 32ull << 20;      // payload bytes per write batch (one sync + txn)
  bool refuse_io_uring = false;            // test hook: behave as if io_uring were refused
  bool durable = true;  // false (tests only): no fdatasync, LMDB MDB_NOSYNC; crash-unsafe
};

struct DiskEntry {  // what the index knows about a block
  std::string ns;
  BlockKey key;
  BlockLayout layout;          // as stored in the host tier (offsets, codecs, checksums)
  uint64_t payload_bytes = 0;  // uncompressed payload (= layout.total_bytes)
  uint64_t disk_bytes = 0;     // on disk (before padding to 4 KiB)
  uint32_t region = 0;
  uint64_t offset = 0;
  uint8_t compression = 0;  // DiskCompression: 0 none, 1 zstd over fp16/bf16 byte planes
  uint64_t checksum = 0;    // XXH3-64 of the disk_bytes stored bytes
  uint64_t last_access_unix_ms = 0;
};

struct DiskUsage {
  uint64_t capacity_bytes = 0, used_bytes = 0, payload_bytes = 0, blocks = 0, regions = 0,
           queued_bytes = 0, writes = 0, write_bytes = 0, reads = 0, read_bytes = 0,
           write_errors = 0, read_errors = 0, corrupt_dropped = 0, regions_reclaimed = 0,
           dropped_at_open = 0;
  uint64_t regions_dropped_at_open = 0;  // addition: region files with no durable record
  uint64_t disk_bytes = 0;               // addition: live bytes as stored (compressed)
};

class DiskTier final : public StoreTier {
 public:
  static Result<std::unique_ptr<DiskTier>> open(const DiskOptions&,
                                                std::unique_ptr<Device> device = nullptr);
  ~DiskTier();  // flushes queued writes, joins threads
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  std::string backend() const;  // "io_uring", "threads (io_uring refused: EPERM)", ...

  // --- The store interface (tiers/tier.h), by the engine's namespace ids. ---
  TierKind kind() const override { return TierKind::kDisk; }
  const char* name() const override { return "disk"; }
  bool durable() const override { return true; }
  // Held, or queued for writing (a lookup counts a block being demoted as cached).
  bool contains(const NsKey& id) const override { return find(id).has_value() || writing(id); }
  bool writing(const NsKey& id) const override;
  Status write(const NsKey& id, const BlockLayout& layout, std::span<const std::byte> payload,
               bool compress, std::function<void(Status)> done) override;
  std::optional<StoredBlock> locate(const NsKey& id) const override;
  void read(const StoredBlock& block, std::span<std::byte> dst,
            std::function<void(Status)> done) override;
  RemoveOutcome remove(const NsKey& id) override;
  EvictCount evict_matching(const std::function<bool(const NsKey&)>& match) override;
  TierUsage usage() const override;  // the common figures of disk_usage()
  void flush() override;             // waits until the write queue is empty

  // The engine's namespace ids.  The tier's index is keyed by namespace name (names outlive
  // a process, ids do not), so the tier keeps the names and its callers pass NsKey: an id is
  // turned into its name here, at the tier's edge, and nowhere else.  Ids are dense and never
  // renamed; an id without a name finds nothing and refuses writes.
  void name_namespace(uint32_t id, std::string_view name);
  std::optional<DiskEntry> find(const NsKey& id) const;

  // --- By namespace name (the tier's own index; tools and tests). ---
  // Copies `payload` into the write queue and returns at once; done(status) runs on an
  // internal thread once the entry is durable and in the index (ok) or failed.  kLimit (done
  // not called) when the queue is full; kAlreadyExists when the key is on disk or queued;
  // kInvalidArgument when payload.size() != layout.total_bytes or it cannot fit a region.
  Status write(std::string_view ns, const BlockKey& key, const BlockLayout& layout,
               std::span<const std::byte> payload, bool compress, std::function<void(Status)> done);
  std::optional<DiskEntry> find(std::string_view ns, const BlockKey& key) const;
  // Reads, decompresses and verifies the payload into dst (>= entry.payload_bytes); done on an
  // internal thread: ok, kCorrupt (entry dropped), kNotFound (reclaimed meanwhile), kIo.
  void read(const DiskEntry& entry, std::span<std::byte> dst, std::function<void(Status)> done);
  Status remove(std::string_view ns, const BlockKey& key);
  uint64_t evict_entries(const std::function<bool(const DiskEntry&)>& match);  // count
  DiskUsage disk_usage() const;
  // disk_usage() through the counter visitor (disk_counters.cpp): the families every tier
  // reports with tier="disk", and kvtier_disk_*; keys of "tiers.disk" in `kvtierctl stats
  // --json`.
  void visit_counters(CounterVisitor& v) const;
  void visit(const std::function<void(const DiskEntry&)>& fn) const;
  struct Progress {
    uint64_t done = 0, total = 0;
  };
  struct VerifyReport {
    uint64_t checked = 0, corrupt = 0;
  };
  Result<VerifyReport> verify(const std::function<void(Progress)>& progress = {});
  struct CompactReport {
    uint64_t moved = 0, regions_freed = 0, bytes_freed = 0;
  };
  // Rewrites the live entries of regions less than half full into new regions, then frees them.
  Result<CompactReport> compact(const std::function<void(Progress)>& progress = {});
  void check_readers();  // mdb_reader_check; call on a timer
  // Called with the blocks that leave the index however they go (remove, eviction, a region
  // reclaimed to make room, a corrupt entry dropped), by namespace name, on the thread that
  // dropped them and with no lock of the tier held; it must not call back into the tier.
  void set_removed_listener(std::function<void(std::string_view ns, std::span<const BlockKey>)> fn);

  struct Impl;

 private:
  explicit DiskTier(std::unique_ptr<Impl> impl);
  std::optional<std::string> name_of(uint32_t id) const;
  uint32_t id_of(std::string_view name) const;  // kUnnamedNamespace when not named
  std::unique_ptr<Impl> impl_;
  mutable Mutex names_mu_;
  std::vector<std::string> names_ GUARDED_BY(names_mu_);  // id -> name ("" = not named)
};

}  // namespace kvtier
