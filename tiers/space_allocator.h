// What a tier needs from the memory it stores blocks in: byte ranges of one arena handed out
// by offset.  The host tier's ShmArena and the GPU tier's PoolAllocator implement it, so the
// index, eviction and lease logic (ArenaTier) is written once.
//
// Thread-safety: none; the owning tier serialises calls.
#pragma once

#include <cstdint>

#include "kvtier/status.h"

namespace kvtier {

class SpaceAllocator {
 public:
  virtual ~SpaceAllocator() = default;
  // Offset of a range of at least `bytes`; kNoSpace when no free range fits.
  virtual Result<uint64_t> allocate(uint64_t bytes) = 0;
  // Returns a range by the offset allocate() gave.
  virtual void deallocate(uint64_t offset) = 0;
  virtual uint64_t free_bytes() const = 0;
  virtual uint64_t size() const = 0;  // bytes of the arena
};

}  // namespace kvtier
