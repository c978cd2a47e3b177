// The shared lookup index: format helpers, the reader's mapping, the daemon's writer.
#include "common/lookup_index.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/futex.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <string>

namespace kvtier {

namespace {

constexpr uint32_t kMaxReadTries = 64;  // a reader gives up on one entry after this many

LookupIndexEntry* entries(std::byte* base) {
  return reinterpret_cast<LookupIndexEntry*>(base + kLookupIndexHeaderBytes);
}
const LookupIndexEntry* entries(const std::byte* base) {
  return reinterpret_cast<const LookupIndexEntry*>(base + kLookupIndexHeaderBytes);
}

// One entry under its seqlock; nullopt when a writer kept it busy for every try.
std::optional<IndexEntrySnapshot> read_entry(const LookupIndexEntry& e) {
  for (uint32_t i = 0; i < kMaxReadTries; ++i) {
    const uint64_t s1 = e.seq.load(std::memory_order_acquire);
    if (s1 & 1) continue;
    IndexEntrySnapshot s;
    s.lo = e.lo.load(std::memory_order_relaxed);
    s.hi = e.hi.load(std::memory_order_relaxed);
    s.ns = e.ns.load(std::memory_order_relaxed);
    s.bits = e.bits.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.seq.load(std::memory_order_relaxed) == s1) return s;
  }
  return std::nullopt;
}

// The bits of (ns + 1, key) by a probe from its home slot.  A busy entry counts as a miss.
uint32_t probe(const std::byte* base, uint64_t slots, uint32_t stored_ns, const BlockKey& key) {
  const LookupIndexEntry* tab = entries(base);
  const uint64_t mask = slots - 1;
  for (uint64_t n = 0, i = key.lo & mask; n < slots; ++n, i = (i + 1) & mask) {
    auto s = read_entry(tab[i]);
    if (!s) return 0;
    if (s->ns == 0) return 0;
    if (s->ns == stored_ns && s->lo == key.lo && s->hi == key.hi) return s->bits;
  }
  return 0;
}

// Writer side (one writer at a time): publishes new contents of entry `e`.
void write_entry(LookupIndexEntry& e, uint64_t lo, uint64_t hi, uint32_t ns, uint32_t bits) {
  const uint64_t s = e.seq.load(std::memory_order_relaxed);
  e.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  e.lo.store(lo, std::memory_order_relaxed);
  e.hi.store(hi, std::memory_order_relaxed);
  e.ns.store(ns, std::memory_order_relaxed);
  e.bits.store(bits, std::memory_order_relaxed);
  e.seq.store(s + 2, std::memory_order_release);
}

size_t bytes_for(uint64_t slots) {
  return kLookupIndexHeaderBytes + slots * sizeof(LookupIndexEntry);
}

// A read-only descriptor of the memfd `fd`, reopened through /proc.
Result<int> reopen_readonly(int fd, const char* what) {
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  int ro = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ro < 0)
    return error(Errc::kIo, std::string("reopen ") + what + " read-only: " + std::strerror(errno));
  return ro;
}

// Seals a memfd the daemon has sized: no size changes, no writable mapping by anyone who
// reopens it (F_SEAL_FUTURE_WRITE, Linux 5.1; best effort on older kernels).
void seal_readonly(int fd) {
  (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
#ifdef F_SEAL_FUTURE_WRITE
  (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE);
#endif
  (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL);
}

}  // namespace

// ---- reader ----

Result<std::unique_ptr<LookupIndexView>> LookupIndexView::map(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return error(Errc::kIo, std::string("fstat: ") + std::strerror(errno));
  const auto size = static_cast<size_t>(st.st_size);
  if (size < kLookupIndexHeaderBytes) return error(Errc::kProtocol, "lookup index too small");
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap: ") + std::strerror(errno));
  std::unique_ptr<LookupIndexView> v(new LookupIndexView(static_cast<const std::byte*>(p), size));
  const LookupIndexHeader* h = v->header();
  const uint64_t slots = h->slots;
  if (h->magic != kLookupIndexMagic || h->version != kLookupIndexVersion ||
      h->header_bytes != kLookupIndexHeaderBytes || h->entry_bytes != sizeof(LookupIndexEntry) ||
      slots == 0 || (slots & (slots - 1)) != 0 || slots > (size >> 5) || bytes_for(slots) != size)
    return error(Errc::kProtocol, "lookup index: bad header (not KVI1 version 1)");
  return v;
}

LookupIndexView::~LookupIndexView() {
  ::munmap(const_cast<std::byte*>(base_), bytes_);
}

uint32_t LookupIndexView::bits(uint32_t ns_id, const BlockKey& key) const {
  return probe(base_, header()->slots, ns_id + 1, key);
}

uint32_t LookupIndexView::prefix(uint32_t ns_id, std::span<const BlockKey> keys,
                                 uint32_t mask) const {
  const uint64_t slots = header()->slots;
  uint32_t n = 0;
  for (const BlockKey& k : keys) {
    if ((probe(base_, slots, ns_id + 1, k) & mask) == 0) break;
    ++n;
  }
  return n;
}

IndexEntrySnapshot LookupIndexView::entry(uint64_t i) const {
  return read_entry(entries(base_)[i & (header()->slots - 1)]).value_or(IndexEntrySnapshot{});
}

// ---- writer ----

struct LookupIndex::Mapping {
  int fd = -1;
  std::byte* base = nullptr;
  size_t bytes = 0;
  uint64_t slots = 0;
  LookupIndexHeader* header() const { return reinterpret_cast<LookupIndexHeader*>(base); }
  ~Mapping() {
    if (base) ::munmap(base, bytes);
    if (fd >= 0) ::close(fd);
  }
};

LookupIndex::LookupIndex(Options options) : options_(options) {}

LookupIndex::~LookupIndex() {
  retire();
}

Result<std::unique_ptr<LookupIndex>> LookupIndex::create(Options options) {
  if (options.slots < 64 || (options.slots & (options.slots - 1)) != 0 ||
      options.max_slots < options.slots || (options.max_slots & (options.max_slots - 1)) != 0)
    return error(Errc::kInvalidArgument, "lookup index slots must be powers of two >= 64");
  std::unique_ptr<LookupIndex> idx(new LookupIndex(options));
  MutexLock lock(idx->mu_);
  if (Status st = idx->grow(options.slots); !st) return st;
  return idx;
}

Status LookupIndex::grow(uint64_t slots) {
  auto m = std::make_unique<Mapping>();
  m->slots = slots;
  m->bytes = bytes_for(slots);
  m->fd = ::memfd_create("kvtier-lookup-index", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (m->fd < 0) return error(Errc::kIo, std::string("memfd_create: ") + std::strerror(errno));
  if (::ftruncate(m->fd, static_cast<off_t>(m->bytes)) != 0)
    return error(Errc::kNoSpace, "lookup index of " + std::to_string(m->bytes) +
                                     " bytes: ftruncate: " + std::strerror(errno));
  void* p = ::mmap(nullptr, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap: ") + std::strerror(errno));
  m->base = static_cast<std::byte*>(p);
  // Readers get read-only descriptors.
  seal_readonly(m->fd);
  LookupIndexHeader* h = m->header();
  h->magic = kLookupIndexMagic;
  h->version = kLookupIndexVersion;
  h->header_bytes = kLookupIndexHeaderBytes;
  h->entry_bytes = sizeof(LookupIndexEntry);
  h->slots = slots;
  h->generation = ++generation_;
  h->domain = options_.domain;
  h->instance_lo = options_.instance.lo;
  h->instance_hi = options_.instance.hi;
  // Copy the live entries (tombstones stay behind) before anyone can map the new memfd.
  uint64_t live = 0;
  if (cur_) {
    const LookupIndexEntry* old = entries(cur_->base);
    LookupIndexEntry* tab = entries(m->base);
    const uint64_t mask = slots - 1;
    for (uint64_t i = 0; i < cur_->slots; ++i) {
      const uint32_t ns = old[i].ns.load(std::memory_order_relaxed);
      const uint32_t bits = old[i].bits.load(std::memory_order_relaxed);
      if (ns == 0 || bits == 0) continue;
      const uint64_t lo = old[i].lo.load(std::memory_order_relaxed);
      uint64_t j = lo & mask;
      while (tab[j].ns.load(std::memory_order_relaxed) != 0) j = (j + 1) & mask;
      write_entry(tab[j], lo, old[i].hi.load(std::memory_order_relaxed), ns, bits);
      ++live;
    }
    ++resizes_;
  }
  h->live.store(live, std::memory_order_relaxed);
  h->used.store(live, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  if (cur_) cur_->header()->retired.store(kIndexReplaced, std::memory_order_release);
  cur_ = std::move(m);
  return {};
}

void LookupIndex::update(uint32_t ns, const BlockKey& key, uint32_t mask, uint32_t bits) {
  const uint32_t stored_ns = ns + 1;
  MutexLock lock(mu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    LookupIndexEntry* tab = entries(cur_->base);
    LookupIndexHeader* h = cur_->header();
    const uint64_t slots = cur_->slots, smask = slots - 1;
    LookupIndexEntry* free_slot = nullptr;  // the first tombstone or empty slot met
    LookupIndexEntry* found = nullptr;
    for (uint64_t n = 0, i = key.lo & smask; n < slots; ++n, i = (i + 1) & smask) {
      LookupIndexEntry& e = tab[i];
      const uint32_t ens = e.ns.load(std::memory_order_relaxed);
      if (ens == 0) {
        if (!free_slot) free_slot = &e;
        break;
      }
      if (ens == stored_ns && e.lo.load(std::memory_order_relaxed) == key.lo &&
          e.hi.load(std::memory_order_relaxed) == key.hi) {
        found = &e;
        break;
      }
      if (!free_slot && e.bits.load(std::memory_order_relaxed) == 0) free_slot = &e;
    }
    if (found) {
      const uint32_t old = found->bits.load(std::memory_order_relaxed);
      const uint32_t now = (old & ~mask) | (bits & mask);
      if (now == old) return;
      write_entry(*found, key.lo, key.hi, stored_ns, now);
      if ((old == 0) != (now == 0)) {
        if (now == 0)
          h->live.fetch_sub(1, std::memory_order_relaxed);
        else
          h->live.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    if ((bits & mask) == 0) return;  // clearing a key the index does not hold
    const uint64_t used = h->used.load(std::memory_order_relaxed);
    const bool reuses_tombstone = free_slot && free_slot->ns.load(std::memory_order_relaxed) != 0;
    if (free_slot && (reuses_tombstone || (used + 1) * 4 <= slots * 3)) {
      write_entry(*free_slot, key.lo, key.hi, stored_ns, bits & mask);
      h->live.fetch_add(1, std::memory_order_relaxed);
      if (!reuses_tombstone) h->used.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // Three quarters used (tombstones included): publish a new memfd, twice the size while
    // live entries fill half of it, else the same size without tombstones.
    const uint64_t live = h->live.load(std::memory_order_relaxed);
    uint64_t want = (live + 1) * 2 > slots ? slots * 2 : slots;
    if (want > options_.max_slots) want = slots;
    if ((live + 1) * 4 > want * 3 || attempt > 0) break;
    if (Status st = grow(want); !st) break;
  }
  ++dropped_;
}

uint32_t LookupIndex::bits(uint32_t ns, const BlockKey& key) const {
  MutexLock lock(mu_);
  return probe(cur_->base, cur_->slots, ns + 1, key);
}

Result<int> LookupIndex::open_readonly_fd() const {
  MutexLock lock(mu_);
  return reopen_readonly(cur_->fd, "lookup index");
}

void LookupIndex::retire() {
  MutexLock lock(mu_);
  if (cur_) cur_->header()->retired.store(kIndexStopped, std::memory_order_release);
}

LookupIndex::Stats LookupIndex::stats() const {
  MutexLock lock(mu_);
  Stats s;
  s.slots = cur_->slots;
  s.live = cur_->header()->live.load(std::memory_order_relaxed);
  s.used = cur_->header()->used.load(std::memory_order_relaxed);
  s.generation = generation_;
  s.resizes = resizes_;
  s.dropped = dropped_;
  s.bytes = cur_->bytes;
  return s;
}

// ---- liveness ----

Result<std::unique_ptr<LivenessView>> LivenessView::map(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return error(Errc::kIo, std::string("fstat: ") + std::strerror(errno));
  if (static_cast<size_t>(st.st_size) != kLivenessBytes)
    return error(Errc::kProtocol, "liveness page: bad size");
  void* p = ::mmap(nullptr, kLivenessBytes, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap: ") + std::strerror(errno));
  std::unique_ptr<LivenessView> v(new LivenessView(static_cast<const std::byte*>(p)));
  const auto* h = reinterpret_cast<const LivenessHeader*>(v->base_);
  if (h->magic != kLivenessMagic || h->version != kLivenessVersion)
    return error(Errc::kProtocol, "liveness page: bad header (not KVL1 version 1)");
  return v;
}

LivenessView::~LivenessView() {
  ::munmap(const_cast<std::byte*>(base_), kLivenessBytes);
}

bool LivenessView::alive() const {
  const auto* word = reinterpret_cast<const uint32_t*>(base_ + kLivenessFutexOffset);
  const uint32_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
  return (w & FUTEX_TID_MASK) != 0 && (w & FUTEX_OWNER_DIED) == 0;
}

Result<std::unique_ptr<DaemonLiveness>> DaemonLiveness::create() {
  std::unique_ptr<DaemonLiveness> d(new DaemonLiveness());
  d->fd_ = ::memfd_create("kvtier-liveness", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (d->fd_ < 0) return error(Errc::kIo, std::string("memfd_create: ") + std::strerror(errno));
  if (::ftruncate(d->fd_, kLivenessBytes) != 0)
    return error(Errc::kIo, std::string("liveness page: ftruncate: ") + std::strerror(errno));
  void* p = ::mmap(nullptr, kLivenessBytes, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd_, 0);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap: ") + std::strerror(errno));
  d->base_ = static_cast<std::byte*>(p);
  seal_readonly(d->fd_);
  auto* h = reinterpret_cast<LivenessHeader*>(d->base_);
  h->magic = kLivenessMagic;
  h->version = kLivenessVersion;
  h->pid = static_cast<uint32_t>(::getpid());
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  const int rc = pthread_mutex_init(&h->mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) return error(Errc::kIo, std::string("liveness mutex: ") + std::strerror(rc));
  if (::pipe2(d->stop_pipe_, O_CLOEXEC) != 0)
    return error(Errc::kIo, std::string("pipe: ") + std::strerror(errno));
  // The holder: a thread of its own, so that the mutex is held by a thread that lives exactly
  // as long as this object (a robust mutex must be unlocked by its owner, before the page is
  // unmapped, or the kernel would walk a dangling robust list entry when the owner ends).
  std::promise<int> locked;
  auto locked_rc = locked.get_future();
  d->holder_ = std::thread([mutex = &h->mutex, rfd = d->stop_pipe_[0], &locked] {
    const int lrc = pthread_mutex_lock(mutex);
    locked.set_value(lrc);
    if (lrc != 0) return;
    char byte;
    while (::read(rfd, &byte, 1) < 0 && errno == EINTR) {
    }
    pthread_mutex_unlock(mutex);
  });
  if (int lrc = locked_rc.get(); lrc != 0)
    return error(Errc::kIo, std::string("liveness mutex lock: ") + std::strerror(lrc));
  return d;
}

DaemonLiveness::~DaemonLiveness() {
  if (stop_pipe_[1] >= 0) ::close(stop_pipe_[1]);  // EOF: the holder unlocks and ends
  if (holder_.joinable()) holder_.join();
  if (stop_pipe_[0] >= 0) ::close(stop_pipe_[0]);
  if (base_) ::munmap(base_, kLivenessBytes);
  if (fd_ >= 0) ::close(fd_);
}

Result<int> DaemonLiveness::open_readonly_fd() const {
  return reopen_readonly(fd_, "liveness page");
}

}  // namespace kvtier
