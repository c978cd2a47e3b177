// Internal: the disk tier's LMDB environment (one per daemon, MDB_NOTLS, map size set once) and
// its four databases: "blocks" (block key -> entry), "by_region" (region, offset -> block key),
// "regions" (region -> RegionRecord) and "meta" ("format" -> version).  LMDB return codes
// become Status in lmdb_status() and nowhere else.
//
// Thread-safety: any thread may read (short read-only transactions from a pool, pool_mu_) or
// write (WriteTxn: LMDB serialises writers; a WriteTxn stays on the thread that began it).
#pragma once

#include <lmdb.h>

#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "tiers/disk/disk_format.h"

namespace kvtier {

class DiskIndex {
 public:
  static Result<std::unique_ptr<DiskIndex>> open(const std::filesystem::path& dir,
                                                 uint64_t map_bytes, bool sync = true);
  ~DiskIndex();

  std::optional<std::string> get_block(std::string_view key) const;
  // Calls fn(key, value) for up to `limit` blocks after `after` (all from the start when
  // empty) in one read transaction; returns the number visited.
  size_t scan_blocks(const std::string& after, size_t limit,
                     const std::function<void(std::string_view, std::string_view)>& fn) const;
  std::map<uint32_t, RegionRecord> regions() const;
  int check_readers();

  class WriteTxn {
   public:
    WriteTxn(WriteTxn&& o) noexcept : ix_(o.ix_), txn_(std::exchange(o.txn_, nullptr)) {}
    ~WriteTxn();  // aborts unless committed
    std::optional<std::string> get_block(std::string_view key);
    Status put_block(std::string_view key, std::string_view value, bool no_overwrite);
    void del_block(std::string_view key);
    void put_by_region(uint32_t region, uint64_t offset, std::string_view block_key);
    void del_by_region(uint32_t region, uint64_t offset);
    std::vector<std::pair<uint64_t, std::string>> region_blocks(uint32_t region);  // offset, key
    Status put_region(uint32_t region, const RegionRecord& rec);
    void del_region(uint32_t region);
    Status commit();

   private:
    friend class DiskIndex;
    WriteTxn(DiskIndex* ix, MDB_txn* txn) : ix_(ix), txn_(txn) {}
    DiskIndex* ix_;
    MDB_txn* txn_;
  };
  Result<WriteTxn> begin_write();

 private:
  DiskIndex() = default;
  MDB_txn* take_reader() const;
  void give_reader(MDB_txn* txn) const;

  MDB_env* env_ = nullptr;
  MDB_dbi blocks_ = 0, by_region_ = 0, regions_ = 0, meta_ = 0;  // constant after open
  mutable Mutex pool_mu_;
  mutable std::vector<MDB_txn*> idle_readers_ GUARDED_BY(pool_mu_);  // reset, renewable
};

Status lmdb_status(int rc, std::string_view what);

}  // namespace kvtier
