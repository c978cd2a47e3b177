// ModalityIndex: the FAISS index of one modality in one namespace, with its id <-> key map,
// tombstones and persistence.  Internal to kvtier_index; SemanticIndex owns the locking:
// const methods may run concurrently with each other, non-const ones need exclusive access.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "index/semantic_index.h"

namespace faiss {
struct Index;
}

namespace kvtier::index_detail {

enum class Kind : uint32_t { kExact = 0, kIvf = 1 };

struct Candidate {
  BlockKey key;
  float cos;  // inner product of unit vectors (approximate for IVF,SQ8)
};

// A rebuild in flight (docs/index.md, "Rebuilds"): begin_rebuild() (exclusive lock) fixes
// the snapshot ids; snapshot() (shared lock) decodes their vectors; build_rebuild() (no lock)
// trains and fills `fresh`; catch_up() (shared lock) copies adds made meanwhile;
// finish_rebuild() (exclusive lock) applies the rest of the delta and swaps.
struct Rebuild {
  Kind kind = Kind::kExact;
  uint32_t dim = 0;
  std::vector<int64_t> ids;  // live ids at begin_rebuild(), ascending
  std::vector<float> vecs;   // their vectors (renormalised), row-major
  std::unique_ptr<faiss::Index> fresh;
  uint32_t nlist = 0;
  uint64_t trained_n = 0;
  size_t applied = 0;  // delta adds already in `fresh`
  Rebuild();
  ~Rebuild();
  Rebuild(Rebuild&&) noexcept;
  Rebuild& operator=(Rebuild&&) noexcept;
};

// Sorts r.ids and sizes r.vecs before snapshot().  Needs no lock.
void prepare_snapshot(Rebuild& r);
// Trains and fills r.fresh from r.ids / r.vecs (then frees r.vecs).  Needs no lock.
void build_rebuild(Rebuild& r);
// Adds delta rows (copied by ModalityIndex::copy_delta) to r.fresh.  Needs no lock.
void catch_up(Rebuild& r, const std::vector<int64_t>& ids, const std::vector<float>& vecs);

// steady_clock in nanoseconds (the search and rebuild timers).
uint64_t now_ns();

// nlist for an IVF index trained on n vectors, and the nprobe used with it (docs/index.md).
uint32_t choose_nlist(uint64_t n);
uint32_t choose_nprobe(uint32_t nlist);

class ModalityIndex {
 public:
  explicit ModalityIndex(uint32_t dim);
  ~ModalityIndex();

  uint32_t dim() const { return dim_; }
  Kind kind() const { return kind_; }
  uint64_t live() const { return key_to_id_.size(); }
  uint64_t dead() const { return dead_ids_.size(); }
  bool dirty() const { return dirty_; }
  void mark_clean() { dirty_ = false; }
  void mark_dirty() { dirty_ = true; }
  ModalityIndexInfo info(const IndexOptions& opts) const;
  uint32_t nprobe(const IndexOptions& opts) const;

  // Adds (replacing) normalised vectors: keys.size() * dim floats.  May ask for a switch to /
  // retraining of the IVF index (see maintain()); the rebuild itself runs elsewhere.
  void add(std::span<const BlockKey> keys, std::span<const float> vecs, const IndexOptions& opts);
  // Tombstones the chunk's vector; false when absent.
  bool remove(const BlockKey& key);
  // Purges tombstones past opts.rebuild_dead_ratio; asks for a switch exact <-> IVF at
  // exact_max_vectors (back to exact below half of it), a retraining of an IVF grown 4x.
  // While a rebuild is in flight it neither decides another one nor purges (the snapshot
  // decodes the old index's vectors, tombstoned ones included).
  void maintain(const IndexOptions& opts, bool purge_all = false);

  // Background rebuilds (SemanticIndex runs them).  wants_rebuild(): maintain() decided one
  // and none is in flight.  queued: set by SemanticIndex when it queued this index.
  bool wants_rebuild() const { return want_.has_value() && !rebuilding_; }
  bool rebuilding() const { return rebuilding_; }
  bool queued = false;
  // Exclusive lock.  Starts recording the delta; nullopt if no rebuild is wanted any more.
  std::optional<Rebuild> begin_rebuild();
  // Shared lock.  Decodes r.ids[from, to) into r.vecs (after prepare_snapshot()).
  void snapshot(Rebuild& r, size_t from, size_t to) const;
  // Shared lock.  Copies the delta adds past r.applied (at most `max`) into ids/vecs.
  size_t pending_adds(const Rebuild& r) const { return delta_ids_.size() - r.applied; }
  void copy_delta(const Rebuild& r, size_t max, std::vector<int64_t>* ids,
                  std::vector<float>* vecs) const;
  // Exclusive lock.  Adds the rest of the delta to r.fresh, tombstones the ids removed
  // meanwhile, swaps r.fresh in (r.fresh then holds the old index: free it after the lock).
  void finish_rebuild(Rebuild& r, const IndexOptions& opts);
  // Exclusive lock.  Drops the rebuild (shutdown): the old index stays.
  void abort_rebuild();
  std::atomic<uint64_t> rebuilds{0}, last_rebuild_ns{0};

  // Up to `k` live chunks nearest to the normalised query q (tombstones skipped), best first,
  // with FAISS's inner product: exact for the flat index; for IVF,SQ8 the inner product with
  // the SQ8-decoded vector, the same value similarity() computes.  `more` (optional) says
  // whether the index may hold further live chunks beyond these k.
  std::vector<Candidate> candidates(const float* q, size_t k, const IndexOptions& opts,
                                    bool* more) const;
  // Cosine between the stored vector of `key` and the normalised q; false when absent.
  bool similarity(const BlockKey& key, const float* q, float* out) const;

  // Persistence (docs/index.md, "modality file"): purge tombstones before serialize().
  std::string serialize() const;
  static Result<std::unique_ptr<ModalityIndex>> deserialize(std::string_view bytes);

  const faiss::Index* faiss_index() const { return index_.get(); }

  // Counters, updated under the shared lock.  faiss_*: the FAISS calls inside candidates()
  // (more than one per search when tombstones or alive() make it fetch again).
  mutable std::atomic<uint64_t> searches{0}, hits{0}, misses{0}, search_ns{0};
  mutable std::atomic<uint64_t> faiss_calls{0}, faiss_ns{0};

 private:
  void purge();

  uint32_t dim_;
  Kind kind_ = Kind::kExact;
  std::unique_ptr<faiss::Index> index_;
  uint32_t nlist_ = 0;
  uint64_t trained_n_ = 0;  // live vectors when the IVF was trained
  // FAISS ids index slots_: a search maps its k labels to keys with k independent loads
  // (an unordered_map took ~3 dependent cache misses each, ~2.5 us per search at k = 10).  An
  // id is reused only once no FAISS structure holds it (after purge() or a rebuild's swap),
  // so slots_ stays as long as the peak of live + tombstoned vectors.
  enum class Slot : uint8_t { kFree = 0, kLive = 1, kDead = 2 };
  struct IdSlot {
    BlockKey key;
    Slot state = Slot::kFree;
  };
  std::vector<IdSlot> slots_;      // by id; slots_.size() is the next fresh id
  std::vector<int64_t> free_ids_;  // reusable ids, taken from the back
  std::unordered_map<BlockKey, int64_t, BlockKeyHash> key_to_id_;  // live chunks
  std::vector<int64_t> dead_ids_;                                  // tombstones still in index_
  int64_t take_id();
  void free_slot(int64_t id);
  bool dirty_ = false;
  std::optional<Kind> want_;  // the rebuild maintain() decided
  bool rebuilding_ = false;
  // The delta since begin_rebuild(): ids (and vectors) added, ids removed.
  std::vector<int64_t> delta_ids_;
  std::vector<float> delta_vecs_;
  std::vector<int64_t> delta_removed_;
};

class Namespace {
 public:
  explicit Namespace(std::string name) : name(std::move(name)) {}
  std::string name;
  std::map<std::string, std::unique_ptr<ModalityIndex>, std::less<>> modalities;
  ModalityIndex* find(std::string_view m) const {
    auto it = modalities.find(m);
    return it == modalities.end() ? nullptr : it->second.get();
  }
};

}  // namespace kvtier::index_detail
