// Internal: DiskTier's state.  See disk_tier.h for the threads and the lock order.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/mutex.h"
#include "tiers/disk/disk_format.h"
#include "tiers/disk/disk_index.h"
#include "tiers/disk/disk_tier.h"

namespace kvtier {

// Payloads are written and read as transfers of at most this many bytes, all in flight at
// once (a 32 MiB block is 8 submissions, not one).
constexpr size_t kIoChunk = 4u << 20;
// The committer folds at most this many jobs of finished batches into one sync + transaction.
constexpr size_t kMaxGroupJobs = 1u << 16;

struct DiskTier::Impl {
  // One queued write, then one placed and submitted write.
  struct Job {
    std::string ns, bkey;
    BlockKey key;
    BlockLayout layout;
    AlignedBuffer payload;  // the caller's bytes (padded)
    uint64_t payload_bytes = 0;
    bool compress = false;
    std::function<void(Status)> done;
    std::optional<std::pair<uint32_t, uint64_t>> replaces;  // compaction: the old location
    uint64_t replaced_disk_bytes = 0;
    // Set by the writer thread:
    AlignedBuffer stored;  // compressed bytes, when compression paid
    uint64_t disk_bytes = 0, checksum = 0;
    uint8_t compression = 0;
    uint32_t region = 0;
    uint64_t offset = 0;
    Status status;  // set by the completion before pending reaches 0, read by the committer
    std::span<const std::byte> bytes() const {
      const AlignedBuffer& b = compression ? stored : payload;
      return {b.data(), align_up(disk_bytes, kDiskAlign)};
    }
  };
  struct Batch {
    std::vector<std::unique_ptr<Job>> jobs;
    uint64_t pending = 0;  // guarded by the Impl's mu_: writes not yet completed
  };
  struct Region {
    RegionRecord rec;
    uint64_t write_end = kRegionHeaderBytes;                 // next append offset
    uint64_t blocks = 0, disk_bytes = 0, payload_bytes = 0;  // live entries
    uint32_t readers = 0;                                    // reads in flight
    uint32_t writes = 0;      // writes placed here, not yet committed
    bool reclaiming = false;  // no new reads; reclaimed once readers drain
  };
  struct Loc {  // an index entry to delete if it still points here
    std::string bkey;
    uint32_t region;
    uint64_t offset;
  };

  // Constant after open().
  DiskOptions opt;
  uint64_t max_regions = 2;
  std::unique_ptr<Device> dev;
  std::unique_ptr<DiskIndex> index;

  mutable Mutex mu_;
  CondVar cv_;  // signalled on every change below
  std::deque<std::unique_ptr<Job>> queue_ GUARDED_BY(mu_);
  std::unordered_set<std::string> pending_ GUARDED_BY(mu_);  // keys queued or in flight
  uint64_t queued_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t unfinished_ GUARDED_BY(mu_) = 0;  // jobs enqueued whose callbacks have not returned
  std::deque<std::unique_ptr<Batch>> batches_ GUARDED_BY(mu_);  // submitted, not committed
  std::map<uint32_t, Region> regions_ GUARDED_BY(mu_);
  std::optional<uint32_t> cur_region_ GUARDED_BY(mu_);  // changed by the writer only
  uint32_t next_region_ = 1;                            // writer thread only (after open)
  std::unordered_map<std::string, uint64_t> touched_ GUARDED_BY(mu_);  // last access to persist
  DiskUsage c_ GUARDED_BY(mu_);                                        // counters
  uint64_t inflight_reads_ GUARDED_BY(mu_) = 0;
  bool stop_ GUARDED_BY(mu_) = false;
  // DiskTier::set_removed_listener's function, called with no lock held (report_removed).
  std::function<void(std::string_view ns, std::span<const BlockKey> keys)> on_removed_
      GUARDED_BY(mu_);
  // Tells the listener that these "blocks" keys (encode_block_key) left the index.
  void report_removed(const std::vector<std::string>& bkeys);
  bool writer_done_ GUARDED_BY(mu_) = false;
  std::deque<std::function<void()>> work_ GUARDED_BY(mu_);  // worker pool tasks
  // Payload buffers of finished jobs, reused by write() (large allocations are fresh mmaps
  // that page-fault on every copy otherwise); at most pool_cap() bytes kept.
  std::vector<AlignedBuffer> pool_ GUARDED_BY(mu_);
  uint64_t pool_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t pool_cap() const { return std::min(opt.write_queue_bytes, 2 * opt.batch_bytes); }
  AlignedBuffer take_buffer(size_t bytes);  // a pooled buffer of exactly this aligned size
  void give_buffer(AlignedBuffer b) REQUIRES(mu_);

  std::thread writer_, committer_;
  std::vector<std::thread> workers_;

  // Runs in open(), before any of the tier's threads starts: nothing to lock against.
  Status recover()
      NO_THREAD_SAFETY_ANALYSIS;  // open(): regions and entries that are not durable are dropped
  void start();
  void stop();
  void post(std::function<void()> fn);
  void worker_loop();
  void writer_loop();
  void committer_loop();
  void prepare(Job& job);
  Status place(Job& job);
  Status open_region();
  bool reclaim(uint32_t region);
  void commit_batch(Batch& batch);
  // Deletes each entry still at its location in one transaction; returns how many.
  uint64_t drop(const std::vector<Loc>& locs);
  // One read in flight: its chunks land in dst directly (uncompressed, dst suitably aligned)
  // or in the bounce buffer `buf`; `tail` holds the last partial page of a direct read.
  struct ReadOp {
    DiskEntry e;
    std::span<std::byte> dst;
    std::function<void(Status)> done;
    AlignedBuffer buf, tail;
    bool direct = false;
    Mutex mu;
    size_t pending GUARDED_BY(mu) = 0;  // chunks not yet completed
    Status io GUARDED_BY(mu);           // the first chunk failure
  };
  void finish_read(ReadOp& op);
  void enqueue(std::unique_ptr<Job> job);
  void start_read(const DiskEntry& e, std::span<std::byte> dst, std::function<void(Status)> done);
  Status read_sync(const DiskEntry& e, std::span<std::byte> dst);
  std::vector<DiskEntry> entries() const;
};

}  // namespace kvtier
