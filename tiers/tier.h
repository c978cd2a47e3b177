// What every tier does: reserve space, insert sealed blocks, find, lease, remove, evict,
// report usage and visit its blocks.  The host tier implements it now; the GPU and disk tiers
// plug in behind the same interface.
//
// Thread-safety: a Tier is not thread-safe.  The daemon's Cache serialises every call under
// its mutex (docs/internals.md); tiers never call back into the Cache.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "kvtier/keys.h"
#include "common/layout.h"
#include "kvtier/status.h"

namespace kvtier {

// A block's identity inside the daemon: the interned namespace id and the chain key.
struct NsKey {
  uint32_t ns = 0;
  BlockKey key;
  friend bool operator==(const NsKey&, const NsKey&) = default;
};
struct NsKeyHash {
  size_t operator()(const NsKey& k) const noexcept {
    return BlockKeyHash{}(k.key) ^ (uint64_t(k.ns) * 0xff51afd7ed558ccdull);
  }
};

enum class TierKind : uint8_t { kGpu = 0, kHost = 1, kDisk = 2 };

// Where a block's bytes live: an arena of the tier and a byte range in it.
struct Extent {
  uint32_t arena = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

// A stored block as the tier sees it.  Pointers to BlockInfo stay valid until the block is
// freed: while leases > 0 it is never freed, moved or evicted.
//
// Compact on purpose: a tier keeps one per block (docs/internals.md, "Memory per block").  The
// layout is not copied into it: shape() is the tier's interned copy of the tensors
// (tiers/layout_table.h, shared by every block of that shape and held while this block is),
// and the block's own checksums sit beside it, inline for one or two tensors.
struct BlockInfo {
  // `shape`: the tier's interned shape of `layout`; the checksums are copied from `layout`.
  BlockInfo(const NsKey& id, const Extent& extent, const BlockLayout& shape,
            const BlockLayout& layout);
  ~BlockInfo();
  BlockInfo(const BlockInfo&) = delete;
  BlockInfo& operator=(const BlockInfo&) = delete;

  // Its stored layout: valid as long as the block (for a lease, while it is held).
  LayoutView layout() const { return LayoutView(*shape_, checksums()); }
  const BlockLayout& shape() const { return *shape_; }  // checksums 0

  NsKey id;
  Extent extent;
  uint32_t leases = 0;

 private:
  static constexpr size_t kInlineChecksums = 2;
  const uint64_t* checksums() const {
    return checksum_count_ <= kInlineChecksums ? inline_checksums_ : heap_checksums_;
  }
  uint16_t checksum_count_ = 0;  // beside leases and doomed: no padding of its own

 public:
  bool doomed = false;  // removed while leased: freed at the last release
  uint64_t created_unix_ms = 0;
  uint64_t last_access_unix_ms = 0;
  uint64_t hits = 0;

 private:
  const BlockLayout* shape_;
  // One per tensor: inline up to two (a KV block's one tensor, or k and v), else an array
  // this BlockInfo allocates and frees (a union member cannot be a unique_ptr cheaply).
  union {
    uint64_t inline_checksums_[kInlineChecksums];
    uint64_t* heap_checksums_;
  };
};

struct TierUsage {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;      // bytes held by sealed blocks (stored size)
  uint64_t reserved_bytes = 0;  // reserved for puts not yet sealed
  uint64_t raw_bytes = 0;       // bytes the sealed blocks had before encoding
  uint64_t fusion_bytes = 0;    // stored bytes of fusion tensors (part of used_bytes)
  uint64_t blocks = 0;
  uint64_t leased_blocks = 0;
  uint64_t evictions = 0;
  uint64_t evicted_bytes = 0;
};

enum class RemoveOutcome { kRemoved, kDeferred, kNotFound };

class Tier {
 public:
  virtual ~Tier() = default;
  virtual TierKind kind() const = 0;
  virtual const char* name() const = 0;

  // Space for a block of `bytes`, evicting unleased blocks as the policy picks them.
  // kNoSpace when leased or reserved blocks leave no room.  Reserved space is invisible
  // to find() until insert().
  virtual Result<Extent> reserve(uint64_t bytes) = 0;
  virtual void unreserve(const Extent& extent) = 0;
  // Publishes a sealed block into reserved space; kAlreadyExists when the key is present
  // (the extent then stays reserved: unreserve it).
  virtual Status insert(const NsKey& id, const Extent& extent, BlockLayout layout) = 0;

  // No side effects: existence checks for lookup.
  virtual const BlockInfo* find(const NsKey& id) const = 0;
  // Takes one lease (an access for the eviction policy); nullptr when absent.
  virtual const BlockInfo* acquire(const NsKey& id) = 0;
  // Drops one lease taken by acquire(); frees a doomed block at its last release.
  virtual void release(const BlockInfo* block) = 0;
  // Removes a block; one that is leased leaves the index now and is freed at its last release.
  virtual RemoveOutcome remove(const NsKey& id) = 0;

  struct EvictCount {
    uint64_t evicted = 0;
    uint64_t skipped_leased = 0;
    uint64_t bytes = 0;
  };
  // Evicts every unleased block for which `match` is true (admin eviction).
  virtual EvictCount evict_matching(const std::function<bool(const BlockInfo&)>& match) = 0;

  virtual TierUsage usage() const = 0;
  virtual void visit(const std::function<void(const BlockInfo&)>& fn) const = 0;
};

}  // namespace kvtier
