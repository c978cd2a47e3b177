// Best-fit allocation of byte ranges inside a device pool [0, size).  The bookkeeping lives in
// host memory (a device pool cannot hold it, and importers must never see it): free ranges by
// offset, for coalescing on free, and by (size, offset), for the smallest range that fits
// (lowest offset among equals).  Every offset and every range length is a multiple of
// kAlignment, so offsets stay aligned for any element type and the NF4 kernels (16 bytes).
//
// Not thread-safe: the owning GpuTier serialises calls.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <utility>

#include "tiers/space_allocator.h"

namespace kvtier::gpu {

class PoolAllocator final : public SpaceAllocator {
 public:
  static constexpr uint64_t kAlignment = 256;

  // Manages [0, size); a tail shorter than kAlignment is never handed out.
  explicit PoolAllocator(uint64_t size);

  // Offset of a range of `bytes` rounded up to kAlignment; kNoSpace when no free range fits
  // (the message gives the largest free range), kInvalidArgument for 0 bytes.
  Result<uint64_t> allocate(uint64_t bytes) override;
  // Frees the range allocate() returned at `offset`, merging it with free neighbours.
  // An offset that is not allocated is ignored (and counted in bad_frees()).
  void deallocate(uint64_t offset) override;
  uint64_t free_bytes() const override { return free_bytes_; }
  uint64_t size() const override { return size_; }

  uint64_t largest_free() const;
  size_t free_ranges() const { return free_by_offset_.size(); }
  size_t allocations() const { return allocated_.size(); }
  uint64_t bad_frees() const { return bad_frees_; }

 private:
  void add_free(uint64_t offset, uint64_t bytes);
  void remove_free(std::map<uint64_t, uint64_t>::iterator it);

  const uint64_t size_;
  std::map<uint64_t, uint64_t> free_by_offset_;           // offset -> length
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;  // (length, offset)
  std::map<uint64_t, uint64_t> allocated_;                // offset -> rounded length
  uint64_t free_bytes_ = 0;
  uint64_t bad_frees_ = 0;
};

}  // namespace kvtier::gpu
