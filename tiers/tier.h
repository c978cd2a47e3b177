// The tiers' one interface.  Every tier (host, GPU, disk, and the remote tier to come) is a
// Tier: it answers whether it holds a block, removes and evicts blocks, and reports its usage
// and counters.  Two families implement the rest:
//
//   MemoryTier  host and GPU: addressable memory, leases that pin, an eviction policy; the
//               engine reserves space, writes the bytes itself and inserts the sealed block.
//               Not thread-safe: the engine serialises every call under its mutex
//               (docs/internals.md) and a tier never calls back into the engine.
//   StoreTier   disk (and remote): blocks stored elsewhere by their own threads.  Thread-safe;
//               writes and reads are asynchronous and report through a callback.  A durable
//               store keeps its blocks across a restart (it recovers them at open).
//
// The engine's ladder (engine/engine.cpp, engine/ladder.cpp) is written against these: a
// lookup asks each tier contains(), a remove or an admin eviction goes to every tier, a get
// leases from the memory tiers and promotes from the first store that holds the block, and
// host eviction demotes into a store.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

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

enum class TierKind : uint8_t { kGpu = 0, kHost = 1, kDisk = 2, kRemote = 3 };

// The namespace id a store tier passes for a block of a namespace this process has not named
// (a disk entry written by an earlier run whose namespace nobody has asked for yet).
constexpr uint32_t kUnnamedNamespace = UINT32_MAX;

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

  // Whether the tier holds the block (no side effects: lookups).  A store that cannot answer
  // without I/O on the network (StoreTier::answers_locally() false) says false here and
  // answers through StoreTier::probe().
  virtual bool contains(const NsKey& id) const = 0;
  // Removes a block; a leased one leaves the index now and is freed at its last release.
  virtual RemoveOutcome remove(const NsKey& id) = 0;

  struct EvictCount {
    uint64_t evicted = 0;
    uint64_t skipped_leased = 0;
    uint64_t bytes = 0;
  };
  // Evicts every unleased block for which `match` is true (admin eviction; nothing is
  // demoted).  A store passes kUnnamedNamespace for blocks of namespaces it has no id for.
  virtual EvictCount evict_matching(const std::function<bool(const NsKey&)>& match) = 0;

  virtual TierUsage usage() const = 0;
};

class MemoryTier : public Tier {
 public:
  bool contains(const NsKey& id) const override { return find(id) != nullptr; }

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

  virtual void visit(const std::function<void(const BlockInfo&)>& fn) const = 0;
};

// What a store knows of a block before reading it: enough to reserve room for it above.
struct StoredBlock {
  NsKey id;
  BlockLayout layout;          // as the memory tier stored it (offsets, codecs, checksums)
  uint64_t payload_bytes = 0;  // the bytes read() delivers (= layout.total_bytes)
  uint64_t version = 0;        // names the stored copy (the disk tier: its checksum)
};

class StoreTier : public Tier {
 public:
  // Survives a restart: open() recovers what was durable, and a write's done(ok) means the
  // block is durable (namespaces with disk = "persist" wait for it).
  virtual bool durable() const = 0;

  // Copies `payload` (a memory tier's stored block: `layout` describes it) and returns at
  // once; done(status) runs on one of the store's threads when the block is stored (ok) or
  // not.  kLimit (done not called) when the store's queue is full; kAlreadyExists when it
  // holds or is writing the key; other errors refuse the write (done not called).
  virtual Status write(const NsKey& id, const BlockLayout& layout,
                       std::span<const std::byte> payload, bool compress,
                       std::function<void(Status)> done) = 0;
  virtual std::optional<StoredBlock> locate(const NsKey& id) const = 0;
  // Whether the store accepted a write of the block that has not landed yet: locate() finds
  // it once the write does (unless the write fails).
  virtual bool writing(const NsKey&) const { return false; }
  // Whether contains() and locate() answer from local state (the disk tier: its LMDB index).
  // A remote store answers only through probe() and locate_async(), which do network I/O on
  // its own threads; the engine never calls those with its lock held.
  virtual bool answers_locally() const { return true; }
  // Which of `keys` (of namespace ns) the store holds: found[i] 1 or 0.  done runs on one of
  // the store's threads, or before probe() returns.  One batch: a remote store asks each node
  // involved once.  The default answers from contains().
  virtual void probe(uint32_t ns, std::span<const BlockKey> keys,
                     std::function<void(std::vector<uint8_t> found)> done) {
    std::vector<uint8_t> found(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) found[i] = contains(NsKey{ns, keys[i]}) ? 1 : 0;
    done(std::move(found));
  }
  // locate(), asynchronously: done on one of the store's threads, or before it returns.
  virtual void locate_async(const NsKey& id, std::function<void(std::optional<StoredBlock>)> done) {
    done(locate(id));
  }
  // Reads the copy locate() described (the same version: a copy stored since, with other
  // bytes, is not read) into dst (>= payload_bytes), verified; done on one of the store's
  // threads, or before read() returns when that copy is gone: ok, kNotFound (gone meanwhile),
  // kCorrupt (dropped), kIo, kInvalidArgument (dst too small).
  virtual void read(const StoredBlock& block, std::span<std::byte> dst,
                    std::function<void(Status)> done) = 0;
  // Waits until every accepted write has finished.
  virtual void flush() = 0;
};

}  // namespace kvtier
