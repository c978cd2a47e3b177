// SemanticIndex: similarity search over the embedding entries of cached chunks (issue 6).
//
// Per namespace, one FAISS index per modality (e.g. "vision" 512-d, "prompt" 384-d).  Every
// vector is L2-normalised on the way in, so inner product == cosine.  A modality index is
// exact (IDMap2,Flat) up to IndexOptions::exact_max_vectors live vectors and an IVF index
// with an 8-bit scalar quantizer past that (docs/index.md has the measurements).  Removals
// are tombstones, purged in batches (and the IVF retrained when the index has grown 4x or
// shrunk back) -- see ModalityIndex.
//
// Thread-safety: every public method may be called from any thread.  search() and stats()
// take a shared lock, so searches run in parallel (each on its calling thread: no
// OpenMP team per query); add(), remove(), save() and the pruning of
// chunks that `alive` reports gone take the exclusive lock (FAISS allows concurrent const
// searches, never a search concurrent with an update); a waiting update holds new searches
// back, so updates are not starved.  `alive` is called with no index lock
// held, so it may take the caller's own locks.  Rebuilds (exact -> IVF, IVF retraining) run
// on a background thread owned by this object: the old index keeps serving searches and
// taking updates meanwhile; the new one is swapped in under a short exclusive lock.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/counters.h"
#include "kvtier/keys.h"
#include "kvtier/status.h"

namespace faiss {
struct Index;
}

namespace kvtier {

struct IndexOptions {
  std::filesystem::path dir;           // persisted indices live here (created if missing)
  uint64_t exact_max_vectors = 10000;  // IDMap2,Flat (exact) up to this many live vectors per
                                       // modality index, then IVF,SQ8 (approximate)
  uint32_t nprobe = 0;                 // 0 = choose from nlist (docs/index.md)
  double rebuild_dead_ratio = 0.25;    // purge tombstones when they exceed this share
};

struct ModalityQuery {
  std::string modality;
  std::vector<float> vector;  // any norm > 0; normalised here
  float threshold = 0.f;      // cosine this modality must reach
  float weight = 1.f;         // >= 0; the weights of a query must not sum to 0
};

struct IndexHit {
  BlockKey key;
  float score = 0;                                          // sum(weight*cos)/sum(weight)
  std::vector<std::pair<std::string, float>> similarities;  // per queried modality, cosine
};

// What one modality index is now (benchmarks and tests; the pointer is only valid while no
// update runs, see faiss_index()).
struct ModalityIndexInfo {
  const faiss::Index* index = nullptr;
  std::string type;  // "IDMap2,Flat" or "IVF<nlist>,SQ8"
  uint32_t dim = 0;
  uint32_t nlist = 0;     // 0 for the exact index
  uint32_t nprobe = 0;    // what search() uses; 0 for the exact index
  uint64_t live = 0;      // chunks with a vector in this modality
  uint64_t dead = 0;      // tombstoned ids still inside the FAISS index
  uint64_t id_slots = 0;  // ids in use or free for reuse (24 bytes each): peak live + dead
};

namespace index_detail {
class Namespace;
class ModalityIndex;
}  // namespace index_detail

class SemanticIndex {
 public:
  // Reloads what was persisted in opts.dir (created if missing).  kCorrupt for a damaged
  // file, kIo when the directory cannot be read or created.
  static Result<std::unique_ptr<SemanticIndex>> open(const IndexOptions& opts);
  ~SemanticIndex();
  SemanticIndex(const SemanticIndex&) = delete;
  SemanticIndex& operator=(const SemanticIndex&) = delete;

  // Adds (or replaces) a chunk's vectors; every vector is L2-normalised here.  Only the
  // modalities given are replaced; the chunk's other modalities stay.  The first vector of a
  // modality in a namespace fixes its dimension.  kInvalidArgument: wrong dimension, empty
  // list or vector, empty modality name, a modality twice, non-finite, zero norm (nothing is
  // added then).
  Status add(std::string_view ns, const BlockKey& chunk,
             const std::vector<std::pair<std::string, std::vector<float>>>& vectors);
  // Many chunks of one modality at once: vectors holds chunks.size() rows of the modality's
  // dimension, row-major (bulk loads and benchmarks; one FAISS call).  All or nothing: any
  // invalid row, or a chunk twice, rejects the whole batch.
  Status add_batch(std::string_view ns, std::string_view modality, std::span<const BlockKey> chunks,
                   std::span<const float> vectors);
  // Removes every vector of the chunk (all modalities); ok if absent.
  void remove(std::string_view ns, const BlockKey& chunk);

  // Up to k chunks whose every queried modality has cosine >= its threshold, best first by
  // sum(weight*cos)/sum(weight).  One modality: its index's top k, scored by FAISS's own
  // inner products (fetched again, bigger, when tombstones or alive() thin a full list).
  // Several: the union of each modality's top 4k+16, scored on every queried
  // modality from the stored vectors (a chunk without a vector in one of them does not
  // match).  Cosines are exact for the flat index, those of the SQ8-decoded vectors for IVF.
  // `alive(key)` filters chunks no longer cached;
  // the index removes those.  An empty result is fine.  kInvalidArgument: no queries, a
  // modality twice, unknown namespace/modality, wrong dimension, non-finite or zero vector,
  // negative or non-finite weight, weights summing to 0.
  Result<std::vector<IndexHit>> search(std::string_view ns,
                                       const std::vector<ModalityQuery>& queries, size_t k,
                                       const std::function<bool(const BlockKey&)>& alive);
  // The same, with `alive` asked about several chunks at once (out[i] = 1 when keys[i] is
  // still cached): the daemon answers a batch under one hold of its cache lock.
  using AliveBatch = std::function<void(std::span<const BlockKey> keys, std::span<uint8_t> out)>;
  Result<std::vector<IndexHit>> search(std::string_view ns,
                                       const std::vector<ModalityQuery>& queries, size_t k,
                                       const AliveBatch& alive);

  // Persists dirty modality indices (one file each, written to a temporary and renamed);
  // purges their tombstones first (a modality index being rebuilt is saved as it is now,
  // tombstones included: open() rebuilds it again).  Only the purge holds the exclusive
  // lock; serialising runs under the shared one and writing under none, so searches go on.
  // The daemon calls it from its own thread on a timer, and at shutdown.
  Status save();

  // Counters and gauges through the visitor (index_counters.cpp): kvtier_index_saves_total and
  // the other index-wide ones unlabelled, then per modality index, labelled namespace and
  // modality, under the shared lock.
  void visit_counters(CounterVisitor& v) const;

  // The same as JSON ("index" of `kvtierctl stats --json`; never waits for a rebuild):
  // {"namespaces": {ns: {modality: {vectors, dead, id_slots, type, dim, nlist, nprobe, searches,
  //   hits, misses, search_us_total, search_us_mean, faiss_calls, faiss_us_total, faiss_us_mean,
  //   rebuilding, rebuilds, last_rebuild_ms}}},  (search_us_*: whole searches; faiss_*: the
  //   FAISS calls inside them, so their difference is SemanticIndex's own share)
  //   "dir": ..., "kernels": "avx512" | "avx2" | "scalar", "exact_max_vectors": ...,
  //   "rebuild_dead_ratio": ..., "rebuilding": any modality index rebuilding, "saves",
  //   "save_failures", "last_save_ms"}
  nlohmann::json stats() const;

  // Info on one modality index once the rebuilds in flight are swapped in (it waits for
  // them: benchmarks and tests see the index their adds asked for); nullopt when absent.  The
  // `index` pointer must not be used concurrently with add/remove/save/search-pruning (benchmarks
  // use it single-threaded).
  std::optional<ModalityIndexInfo> info(std::string_view ns, std::string_view modality) const;

  const IndexOptions& options() const { return opts_; }

  // Blocks until no rebuild is queued or running (info() calls it; tests, benchmarks).
  void wait_for_rebuilds() const;
  // Test hook: called on the rebuild thread, with no lock held, once the new index is built
  // and before the adds/removes made meanwhile are replayed and it is swapped in.  Set it
  // before the add that triggers the rebuild.
  void set_rebuild_hook(std::function<void()> hook);

 private:
  explicit SemanticIndex(IndexOptions opts);
  index_detail::Namespace* find_ns(std::string_view ns) const;  // requires mu_ (any mode)
  std::shared_lock<std::shared_mutex> read_lock() const;
  std::unique_lock<std::shared_mutex> write_lock();
  index_detail::Namespace& ns_for_write(std::string_view ns);  // requires mu_ exclusive
  // Queues a rebuild the modality index asked for (requires mu_ exclusive).
  void kick(index_detail::ModalityIndex* mi);
  void rebuild_loop();
  void run_rebuild(index_detail::ModalityIndex* mi);
  void visit_totals(CounterVisitor& v) const;  // the unlabelled ones (no lock)

  // Constant after construction.
  const IndexOptions opts_;

  // Guarded by mu_ (shared: search, stats, info; exclusive: everything that mutates).
  // glibc's rwlock prefers readers: writers first take gate_ (held until they own mu_), and
  // readers pass through gate_ before taking mu_ shared, so a stream of searches cannot
  // starve an update.  Lock order: save_mu_, gate_, mu_.
  mutable std::mutex gate_;
  mutable std::shared_mutex mu_;
  // Namespaces and their ModalityIndex objects are never destroyed before *this, so a
  // pointer to one may be used for its atomic counters after mu_ is released.
  std::vector<std::unique_ptr<index_detail::Namespace>> namespaces_;
  std::mutex save_mu_;  // one save() at a time (writes files outside mu_)
  // save() calls that wrote files / failed; the duration of the last that wrote.
  std::atomic<uint64_t> saves_{0}, save_failures_{0}, last_save_ns_{0};

  // Rebuilds (docs/index.md, "Rebuilds"): one thread, one rebuild at a time.  job_mu_ guards
  // jobs_, busy_, stop_, hook_; lock order mu_, job_mu_ (the thread never holds both).
  mutable std::mutex job_mu_;
  mutable std::condition_variable job_cv_, idle_cv_;
  std::deque<index_detail::ModalityIndex*> jobs_;
  bool busy_ = false, stop_ = false;
  std::atomic<bool> stopping_{false};
  std::function<void()> hook_;
  std::thread worker_;  // last: started by the constructor, joined by the destructor
};

}  // namespace kvtier
