// A shared-memory arena for the host tier, managed with Boost.Interprocess.
//
// The daemon creates /dev/shm/<name>, maps it read-write and is the only allocator
// (rbtree best-fit inside the segment).  Clients receive a read-only descriptor of the same
// object over the socket (SCM_RIGHTS) and map it PROT_READ, so they can read every block
// without a copy and can write none.  The allocator's bookkeeping lives in the segment and is
// visible to clients read-only; it is never trusted from anything a client wrote.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kvtier/status.h"
#include "tiers/space_allocator.h"

namespace kvtier {

class ShmArena final : public SpaceAllocator {
 public:
  // Creates (replacing a stale object of the same name: the caller holds the claim on the
  // name, daemon/instance_lock.h) and maps `bytes` of shared memory.
  // With prefault, every page is populated now so puts never take page faults.
  static Result<std::unique_ptr<ShmArena>> create(const std::string& name, uint64_t bytes,
                                                  bool prefault);
  ~ShmArena() override;  // unmaps, and unlinks the name while it still names this object
  ShmArena(const ShmArena&) = delete;
  ShmArena& operator=(const ShmArena&) = delete;

  const std::string& name() const { return name_; }
  std::byte* base() const { return base_; }
  uint64_t size() const override { return size_; }

  // Offset of `bytes` aligned to kAlignment; kNoSpace when no range fits.
  Result<uint64_t> allocate(uint64_t bytes) override;
  void deallocate(uint64_t offset) override;
  uint64_t free_bytes() const override;

  // A new read-only descriptor for the object this arena holds open (never reopened by
  // name); the caller closes it.
  Result<int> open_readonly_fd() const;
  // /dev/shm/<name> still names this arena's object (false: removed or replaced since).
  bool name_intact() const;

  // 64: a cache line, and enough for every tensor (raw 64, NF4 16; docs/nf4.md, capacity).
  static constexpr uint64_t kAlignment = 64;

 private:
  struct Impl;
  explicit ShmArena(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string name_;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kvtier
