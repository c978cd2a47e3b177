// The shared lookup index (docs/protocol.md, "Lookup index"): a read-only memfd per isolation
// domain in which the daemon publishes which blocks its tiers hold, so that a client answers
// "how much of this chain is cached?" with reads of shared memory, no round trip.
//
// Layout, version 1 (little-endian; the atomics lock-free and address-free):
//   offset 0     LookupIndexHeader, one page
//   offset 4096  `slots` LookupIndexEntry of 32 bytes (slots a power of two)
// Open addressing with linear probing from slot (key.lo & (slots - 1)).  An entry whose `ns`
// is 0 is empty and ends a probe; one whose `bits` is 0 is a tombstone (its block left every
// tier; the slot is reused).  Writers (the daemon alone, one at a time) update an entry under
// its seqlock: seq odd while the entry changes.  Readers never write, never block the
// daemon, and take an entry only when seq was even and unchanged around their read, so they
// never see a torn entry.  A reader racing an update may answer from the state just before
// it: at worst it reports a block a following get misses (the get is authoritative), never a
// block of another namespace (the namespace id is part of the match).
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <thread>

#include "common/mutex.h"
#include "kvtier/keys.h"
#include "kvtier/status.h"

namespace kvtier {

constexpr uint32_t kLookupIndexMagic = 0x3149564bu;  // "KVI1"
constexpr uint32_t kLookupIndexVersion = 1;
constexpr size_t kLookupIndexHeaderBytes = 4096;

// Tier bits of an entry.
constexpr uint32_t kIndexGpu = 1u;   // some GPU tier of the domain
constexpr uint32_t kIndexHost = 2u;  // the domain's host tier
constexpr uint32_t kIndexDisk = 4u;  // the disk tier (or queued for it)

// LookupIndexHeader::retired: why a mapping is stale (a reader remaps through MapIndexReq, or
// asks the daemon).
constexpr uint32_t kIndexLive = 0;
constexpr uint32_t kIndexReplaced = 1;
constexpr uint32_t kIndexStopped = 2;

struct LookupIndexHeader {
  uint32_t magic;  // written once before the descriptor is passed
  uint32_t version;
  uint32_t header_bytes;  // 4096: entries start here
  uint32_t entry_bytes;   // 32
  uint64_t slots;         // a power of two
  uint64_t generation;    // grows by one each time the daemon publishes a new memfd
  uint32_t domain;        // the isolation domain (arena id) whose blocks it lists
  uint32_t reserved;
  uint64_t instance_lo;  // HelloResp.instance of the daemon that wrote it
  uint64_t instance_hi;
  // Set by the daemon when this memfd stops being updated (kIndexReplaced, kIndexStopped).
  alignas(64) std::atomic<uint32_t> retired;
  std::atomic<uint64_t> live;  // entries with bits != 0 (informative)
  std::atomic<uint64_t> used;  // entries with ns != 0, tombstones included (informative)
};

struct LookupIndexEntry {
  std::atomic<uint64_t> seq;  // even: stable; odd: being written
  std::atomic<uint64_t> lo;
  std::atomic<uint64_t> hi;
  std::atomic<uint32_t> ns;    // namespace id + 1 (ResolveResp.ns_id + 1); 0 = empty slot
  std::atomic<uint32_t> bits;  // kIndex* of the tiers holding the block; 0 = tombstone
};
static_assert(sizeof(LookupIndexEntry) == 32);
static_assert(sizeof(LookupIndexHeader) <= kLookupIndexHeaderBytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// One entry as a reader saw it (consistent: never torn).
struct IndexEntrySnapshot {
  uint64_t lo = 0, hi = 0;
  uint32_t ns = 0;  // as stored: id + 1, 0 = empty
  uint32_t bits = 0;
};

// The daemon's liveness page (docs/protocol.md, "Lookup index"): one page per daemon, handed
// with every index descriptor.  A thread of kvtierd holds a robust, process-shared mutex in it
// for as long as the daemon lives; when that thread ends, however the process ends (SIGKILL
// included), the kernel takes the owner's thread id out of the mutex's futex word (the robust
// futex ABI: the word holds the owner's TID, FUTEX_OWNER_DIED is set when it dies).  A reader
// loads that word: no owner means the daemon is gone, and the indexes it wrote are stale
// although nobody could mark them retired.
constexpr uint32_t kLivenessMagic = 0x314c564bu;  // "KVL1"
constexpr uint32_t kLivenessVersion = 1;
constexpr size_t kLivenessBytes = 4096;
constexpr size_t kLivenessFutexOffset = 64;  // the mutex, whose first word is the futex word

struct LivenessHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t pid;  // kvtierd's process id (informative)
  uint32_t reserved;
  alignas(64) pthread_mutex_t mutex;  // robust, process-shared; locked while kvtierd lives
};
static_assert(offsetof(LivenessHeader, mutex) == kLivenessFutexOffset);

// A read-only mapping of a liveness page (the client's side).
class LivenessView {
 public:
  static Result<std::unique_ptr<LivenessView>> map(int fd);
  ~LivenessView();
  LivenessView(const LivenessView&) = delete;
  LivenessView& operator=(const LivenessView&) = delete;
  // False once the daemon's holder thread has ended (the daemon stopped or died).
  bool alive() const;

 private:
  explicit LivenessView(const std::byte* base) : base_(base) {}
  const std::byte* base_;
};

// The daemon's side: creates the page and a thread that holds its mutex until destruction.
class DaemonLiveness {
 public:
  static Result<std::unique_ptr<DaemonLiveness>> create();
  // Releases the mutex (readers see the daemon gone), ends the thread, unmaps.
  ~DaemonLiveness();
  DaemonLiveness(const DaemonLiveness&) = delete;
  DaemonLiveness& operator=(const DaemonLiveness&) = delete;
  // A new read-only descriptor of the page; the caller closes it.
  Result<int> open_readonly_fd() const;

 private:
  DaemonLiveness() = default;
  int fd_ = -1;
  std::byte* base_ = nullptr;
  int stop_pipe_[2] = {-1, -1};  // the holder thread waits for a byte (or EOF) here
  std::thread holder_;
};

// A read-only mapping of one index memfd (the client's side).
class LookupIndexView {
 public:
  // Maps `fd` read-only (the descriptor stays the caller's) and checks its header: magic,
  // version, sizes against the file's.  kProtocol for a bad header.
  static Result<std::unique_ptr<LookupIndexView>> map(int fd);
  ~LookupIndexView();
  LookupIndexView(const LookupIndexView&) = delete;
  LookupIndexView& operator=(const LookupIndexView&) = delete;

  // The number of leading keys of namespace `ns_id` whose entry has a tier bit set (in
  // `mask`), in one pass over the keys.
  uint32_t prefix(uint32_t ns_id, std::span<const BlockKey> keys, uint32_t mask = ~0u) const;
  // The tier bits of one key (0: not cached).
  uint32_t bits(uint32_t ns_id, const BlockKey& key) const;
  // kIndexLive, or why this mapping is stale.
  uint32_t retired() const { return header()->retired.load(std::memory_order_acquire); }
  uint64_t generation() const { return header()->generation; }
  uint64_t slots() const { return header()->slots; }
  uint32_t domain() const { return header()->domain; }
  // Slot `i` read under its seqlock (tests check invariants of every entry).
  IndexEntrySnapshot entry(uint64_t i) const;

 private:
  LookupIndexView(const std::byte* base, size_t bytes) : base_(base), bytes_(bytes) {}
  const LookupIndexHeader* header() const {
    return reinterpret_cast<const LookupIndexHeader*>(base_);
  }
  const std::byte* base_;
  size_t bytes_;
};

// The daemon's side: creates the memfd, is its only writer, and publishes a larger one when
// it fills.  Thread-safe (one internal mutex, a leaf lock: nothing is called with it held).
class LookupIndex {
 public:
  struct Options {
    uint32_t domain = 0;
    BlockKey instance;
    uint64_t slots = 1 << 16;      // initial, a power of two
    uint64_t max_slots = 1 << 22;  // the largest it grows to
  };
  static Result<std::unique_ptr<LookupIndex>> create(Options options);
  ~LookupIndex();

  // Sets the bits under `mask` of (ns, key) to `bits & mask`, keeping its other bits.  An
  // entry left with no bit is a tombstone.  A key the index has no room for (max_slots
  // reached) is dropped and counted: lookups from the index then miss it.
  void update(uint32_t ns, const BlockKey& key, uint32_t mask, uint32_t bits);
  uint32_t bits(uint32_t ns, const BlockKey& key) const;
  // A new read-only descriptor of the current memfd; the caller closes it.
  Result<int> open_readonly_fd() const;
  // Marks the current memfd stopped (the daemon is going away): readers stop trusting it.
  void retire();

  struct Stats {
    uint64_t slots = 0, live = 0, used = 0, generation = 0, resizes = 0, dropped = 0;
    uint64_t bytes = 0;
  };
  Stats stats() const;

 private:
  struct Mapping;
  explicit LookupIndex(Options options);
  Status grow(uint64_t slots) REQUIRES(mu_);
  const Options options_;
  mutable Mutex mu_;
  std::unique_ptr<Mapping> cur_ GUARDED_BY(mu_);
  uint64_t generation_ GUARDED_BY(mu_) = 0;
  uint64_t resizes_ GUARDED_BY(mu_) = 0;
  uint64_t dropped_ GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier
