// ModalityIndex: the FAISS index of one modality in one namespace, with its id <-> key map,
// tombstones and persistence.  Internal to kvtier_index; SemanticIndex owns the locking:
// const methods may run concurrently with each other, non-const ones need exclusive access.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
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

  // Adds (replacing) normalised vectors: keys.size() * dim floats.  May switch to / retrain
  // the IVF index (see maintain()).
  void add(std::span<const BlockKey> keys, std::span<const float> vecs, const IndexOptions& opts);
  // Tombstones the chunk's vector; false when absent.
  bool remove(const BlockKey& key);
  // Purges tombstones past opts.rebuild_dead_ratio, switches exact <-> IVF at
  // exact_max_vectors (back to exact below half of it), retrains an IVF grown 4x.
  void maintain(const IndexOptions& opts, bool purge_all = false);

  // Up to `k` live chunks nearest to the normalised query q (tombstones skipped), best first,
  // with FAISS's inner product: exact for the flat index; for IVF,SQ8 the inner product with
  // the SQ8-decoded vector, the same value similarity() computes.
  std::vector<Candidate> candidates(const float* q, size_t k, const IndexOptions& opts) const;
  // Cosine between the stored vector of `key` and the normalised q; false when absent.
  bool similarity(const BlockKey& key, const float* q, float* out) const;

  // Persistence (docs/index.md, "modality file"): purge tombstones before serialize().
  std::string serialize() const;
  static Result<std::unique_ptr<ModalityIndex>> deserialize(std::string_view bytes);

  const faiss::Index* faiss_index() const { return index_.get(); }

  // Counters, updated under the shared lock.
  mutable std::atomic<uint64_t> searches{0}, hits{0}, misses{0}, search_ns{0};

 private:
  void rebuild(Kind kind, const IndexOptions& opts, std::span<const int64_t> extra_ids = {},
               std::span<const float> extra_vecs = {});
  void purge();

  uint32_t dim_;
  Kind kind_ = Kind::kExact;
  std::unique_ptr<faiss::Index> index_;
  uint32_t nlist_ = 0;
  uint64_t trained_n_ = 0;  // live vectors when the IVF was trained
  int64_t next_id_ = 0;     // FAISS ids are never reused
  std::unordered_map<BlockKey, int64_t, BlockKeyHash> key_to_id_;
  std::unordered_map<int64_t, BlockKey> id_to_key_;  // live ids only
  std::vector<int64_t> dead_ids_;                    // tombstones still in index_
  bool dirty_ = false;
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
