// Internal: the region files of a directory and their descriptors, shared by the io_uring and
// thread-pool devices.  Opens with O_DIRECT and falls back to buffered I/O (reported by
// buffered()) where the file system refuses it with EINVAL.
//
// Thread-safety: mu_ guards fds_; fd() hands out a descriptor that stays open until
// remove_region() (the tier never removes a region with I/O in flight on it).
#pragma once

#include <atomic>
#include <map>
#include <mutex>

#include "common/mutex.h"
#include "tiers/disk/device.h"

namespace kvtier {

class RegionFiles {
 public:
  explicit RegionFiles(const FileDeviceOptions& options);
  ~RegionFiles();
  Status create(uint32_t region, uint64_t reserve_bytes);
  Status open(uint32_t region);
  Status remove(uint32_t region);
  std::vector<uint32_t> list() const;
  Result<uint64_t> size(uint32_t region);
  Status sync(uint32_t region);
  int fd(uint32_t region);  // -1 when not open
  bool buffered() const { return buffered_.load(); }
  std::string suffix() const { return buffered() ? " + buffered (O_DIRECT refused)" : ""; }
  std::filesystem::path path(uint32_t region) const;

 private:
  Status open_flags(uint32_t region, int flags);

  const FileDeviceOptions options_;
  std::atomic<bool> buffered_{false};
  mutable Mutex mu_;
  std::map<uint32_t, int> fds_ GUARDED_BY(mu_);
};

}  // namespace kvtier
