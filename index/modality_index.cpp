#include "index/modality_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>
#include <omp.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>

#include "index/fast_faiss.h"

namespace kvtier::index_detail {
namespace {

using idx_t = faiss::Index::idx_t;

constexpr char kMagic[8] = {'K', 'V', 'T', 'S', 'I', 'D', 'X', '\n'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kTrainPointsPerList = 40;     // FAISS warns below 39 per centroid
constexpr size_t kSmallAdd = 64;                 // adds of up to this many vectors: one thread
constexpr uint64_t kMaxIds = uint64_t{1} << 32;  // a larger id table in a file is corrupt

// One query gains nothing from an OpenMP team, and concurrent searches each opening a team
// oversubscribe the cores and spin in libgomp: searches run on the calling thread alone.
class SingleThreadedOmp {
 public:
  SingleThreadedOmp() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreadedOmp() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

std::unique_ptr<faiss::Index> make_exact(uint32_t dim) {
  auto idmap = std::make_unique<faiss::IndexIDMap2>(new FlatIP(dim));
  idmap->own_fields = true;
  return idmap;
}

template <typename T>
void put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
bool get(std::string_view& in, T* v) {
  if (in.size() < sizeof *v) return false;
  std::memcpy(v, in.data(), sizeof *v);
  in.remove_prefix(sizeof *v);
  return true;
}

// faiss::write_index into a std::string.
struct StringWriter final : faiss::IOWriter {
  explicit StringWriter(std::string& out) : out(out) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    if (size * nitems > 0) out.append(static_cast<const char*>(ptr), size * nitems);
    return nitems;
  }
  std::string& out;
};

// faiss::read_index from bytes in memory, without copying them first (VectorIOReader's rules:
// whole items only, 0 at the end).
struct ViewReader final : faiss::IOReader {
  explicit ViewReader(std::string_view in) : in(in) {}
  size_t operator()(void* ptr, size_t size, size_t nitems) override {
    if (size == 0 || pos >= in.size()) return 0;
    nitems = std::min(nitems, (in.size() - pos) / size);
    if (nitems == 0) return 0;  // FAISS reads empty vectors through a null pointer
    std::memcpy(ptr, in.data() + pos, size * nitems);
    pos += size * nitems;
    return nitems;
  }
  std::string_view in;
  size_t pos = 0;
};

// FAISS's read_index trusts its input: an IDMap2 whose id map is shorter than its ntotal is
// read out of bounds (construct_rev_map), and any FAISS index type named in the bytes is
// built.  Before a file's FAISS part goes to it, check that the part has the shape kvtier
// writes (FAISS 1.7.3 layout): an IDMap2 over a flat index holding `n` vectors of `dim`
// floats, its id map of n ids ending the part; or an IVF scalar quantizer of `dim` whose
// coarse quantizer is a flat index (the rest of an IVF part FAISS checks itself).
class FaissPart {
 public:
  explicit FaissPart(std::string_view in) : in_(in) {}
  bool fourcc(std::initializer_list<const char*> names) {
    if (in_.size() < 4) return false;
    for (const char* n : names)
      if (in_.substr(0, 4) == std::string_view(n, 4)) return in_.remove_prefix(4), true;
    return false;
  }
  // Index header: d, ntotal, two dummies, is_trained, metric_type (and metric_arg past 1).
  bool header(uint32_t* d, uint64_t* ntotal) {
    int32_t dim = 0, metric = 0;
    int64_t total = 0, dummy = 0;
    uint8_t trained = 0;
    if (!get(in_, &dim) || !get(in_, &total) || !get(in_, &dummy) || !get(in_, &dummy) ||
        !get(in_, &trained) || !get(in_, &metric) || dim <= 0 || total < 0)
      return false;
    float arg;
    if (metric > 1 && !get(in_, &arg)) return false;
    *d = static_cast<uint32_t>(dim);
    *ntotal = static_cast<uint64_t>(total);
    return true;
  }
  // A flat index of n vectors of d floats.
  bool flat(uint32_t d, uint64_t n) {
    uint32_t fd = 0;
    uint64_t fn = 0, floats = 0;
    if (!fourcc({"IxFI", "IxF2", "IxFl"}) || !header(&fd, &fn) || fd != d || fn != n ||
        !get(in_, &floats) || floats / d != n || floats % d != 0 || floats > in_.size() / 4)
      return false;
    in_.remove_prefix(floats * 4);
    return true;
  }
  bool u64(uint64_t* v) { return get(in_, v); }
  template <typename T>
  bool scalar(T* v) {
    return get(in_, v);
  }
  // A vector as FAISS writes one: a u64 count, then count elements of `elem` bytes.
  bool vec(size_t elem, uint64_t* count) {
    if (!get(in_, count) || *count > in_.size() / elem) return false;
    in_.remove_prefix(*count * elem);
    return true;
  }
  size_t left() const { return in_.size(); }

 private:
  std::string_view in_;
};

// An enum field FAISS filled from the file unchecked, read through its bytes: a value outside
// the enum's range must not be loaded as the enum (undefined behaviour).
template <typename E>
std::underlying_type_t<E> raw_enum(const E& e) {
  std::underlying_type_t<E> v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

// A bool FAISS read from the file as a byte: anything but 0 or 1 must not be loaded as bool.
bool raw_bool_ok(const bool& b) {
  uint8_t v;
  std::memcpy(&v, &b, 1);
  return v <= 1;
}

// What read_index built is what kvtier writes: inner product, `dim`, and for IVF an 8-bit
// scalar quantizer over a flat quantizer of nlist centroids with matching inverted lists.
// Empty when it is; else why not.  Before adopt(), which copies the fields.
std::string loaded_mismatch(const faiss::Index& idx, Kind kind, uint32_t dim) {
  constexpr auto kIp = faiss::METRIC_INNER_PRODUCT;
  if (idx.d != static_cast<int>(dim)) return "dimension mismatch";
  if (raw_enum(idx.metric_type) != kIp || !raw_bool_ok(idx.is_trained)) return "unexpected metric";
  if (kind == Kind::kExact) {
    const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(&idx);
    if (map == nullptr || map->index == nullptr ||
        !dynamic_cast<const faiss::IndexFlat*>(map->index))
      return "unexpected FAISS index type";
    if (map->index->d != idx.d || raw_enum(map->index->metric_type) != kIp ||
        !raw_bool_ok(map->index->is_trained))
      return "inner index mismatch";
    return {};
  }
  const auto* ivf = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(&idx);
  if (ivf == nullptr) return "unexpected FAISS index type";
  const uint64_t d = dim;
  if (raw_enum(ivf->sq.qtype) != faiss::ScalarQuantizer::QT_8bit ||
      static_cast<uint32_t>(raw_enum(ivf->sq.rangestat)) > faiss::ScalarQuantizer::RS_optim ||
      !raw_bool_ok(ivf->by_residual) || ivf->sq.d != d || ivf->sq.code_size != d ||
      ivf->code_size != d || ivf->sq.trained.size() != 2 * d)
    return "IVF quantizer parameters kvtier does not write";
  const faiss::Index* q = ivf->quantizer;
  if (q == nullptr || !dynamic_cast<const faiss::IndexFlat*>(q) || q->d != idx.d ||
      raw_enum(q->metric_type) != kIp || !raw_bool_ok(q->is_trained) || q->ntotal < 0 ||
      static_cast<size_t>(q->ntotal) != ivf->nlist)
    return "IVF coarse quantizer mismatch";
  if (ivf->invlists == nullptr || ivf->invlists->nlist != ivf->nlist ||
      ivf->invlists->code_size != ivf->code_size)
    return "IVF lists mismatch";
  // The lists hold every vector the header counts (a list named twice in a sparse size table
  // keeps the last size only: fuzz finding 13).
  uint64_t listed = 0;
  for (size_t l = 0; l < ivf->nlist; ++l) listed += ivf->invlists->list_size(l);
  if (ivf->ntotal < 0 || listed != static_cast<uint64_t>(ivf->ntotal))
    return "IVF lists do not hold the index's vectors";
  const auto dm = raw_enum(ivf->direct_map.type);
  if (dm != faiss::DirectMap::NoMap && dm != faiss::DirectMap::Array &&
      dm != faiss::DirectMap::Hashtable)
    return "IVF direct map of an unknown type";
  return {};
}

bool faiss_part_plausible(std::string_view part, Kind kind, uint32_t dim, uint64_t n) {
  FaissPart p(part);
  uint32_t d = 0;
  uint64_t total = 0, ids = 0;
  if (kind == Kind::kExact)
    return p.fourcc({"IxM2"}) && p.header(&d, &total) && d == dim && total == n && p.flat(d, n) &&
           p.u64(&ids) && ids == n && p.left() == n * 8;
  // IVF: header, nlist, nprobe, the coarse quantizer, the direct map, the scalar quantizer,
  // code_size (and by_residual for "IwSq"), then the inverted lists ("ilar"), whose every
  // list FAISS sizes before it reads any: their sizes must fit what is left.
  uint64_t nlist = 0, nprobe = 0, count = 0, sq_d = 0, sq_code = 0, code = 0;
  const bool residual_field = part.substr(0, 4) == "IwSq";
  char map_type = 0;
  int32_t qtype = 0, rangestat = 0;
  float rangestat_arg = 0;
  uint8_t by_residual = 0;
  if (!p.fourcc({"IwSq", "IwSQ"}) || !p.header(&d, &total) || d != dim || total != n ||
      !p.u64(&nlist) || !p.u64(&nprobe) || nlist == 0 || nlist > p.left() / (4 * d) ||
      !p.flat(d, nlist) || !p.scalar(&map_type) || !p.vec(8, &count) ||
      (map_type == 2 && !p.vec(16, &count)) || !p.scalar(&qtype) || !p.scalar(&rangestat) ||
      !p.scalar(&rangestat_arg) || !p.u64(&sq_d) || !p.u64(&sq_code) || !p.vec(4, &count) ||
      !p.u64(&code) || (residual_field && !p.scalar(&by_residual)) || code == 0 || code > p.left())
    return false;
  // List sizes: "full" (one per list) or "sprs" (list, size pairs for the non-empty ones).
  uint64_t lists = 0, list_code = 0, words = 0;
  if (!p.fourcc({"ilar"}) || !p.u64(&lists) || !p.u64(&list_code) || lists != nlist ||
      list_code != code)
    return false;
  const bool sparse = p.fourcc({"sprs"});
  if (!sparse && !p.fourcc({"full"})) return false;
  if (!p.u64(&words) || words > p.left() / 8 || (sparse ? words % 2 != 0 : words != nlist))
    return false;
  uint64_t stored = 0;     // vectors in all lists
  uint64_t next_list = 0;  // "sprs" names each list once, in increasing order, as FAISS writes
  for (uint64_t i = 0; i < (sparse ? words / 2 : words); ++i) {
    uint64_t list = i, size = 0;
    if ((sparse && (!p.u64(&list) || list < next_list || list >= nlist)) || !p.u64(&size) ||
        size > n || stored + size > n)
      return false;
    next_list = list + 1;
    stored += size;
  }
  return stored == n && p.left() / (code + 8) == n && p.left() % (code + 8) == 0;
}

void renormalise(float* v, uint32_t dim) {
  float n = std::sqrt(faiss::fvec_norm_L2sqr(v, dim));
  if (n > 0)
    for (uint32_t i = 0; i < dim; ++i) v[i] /= n;
}

}  // namespace

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// nlist ~ 2 sqrt(n): lists of ~sqrt(n)/2 vectors.  Measured at 1M clustered 512-d vectors
// (docs/index.md): at an equal share of the data scanned, more lists find the nearest
// neighbour more often (1000 lists x 32 probes: recall@1 0.977 in 2.6 ms; 2000 x 16: 0.970 in
// 0.64 ms), while training and adding stay reasonable on two cores (2000 lists: ~30 s for 1M
// vectors; 4000: ~130 s with FAISS's 25 k-means iterations).  Capped at 4096 for that reason.
uint32_t choose_nlist(uint64_t n) {
  auto s = static_cast<uint32_t>(2 * std::sqrt(static_cast<double>(n)));
  return std::clamp<uint32_t>(s, 16, 4096);
}

// nprobe ~ nlist / 64 scans ~1/64 of the vectors: recall@1 0.983 at 1M clustered (2000 lists,
// 32 probes, ~1.2 ms); nlist / 128 gave 0.970, too close to the 0.95 goal for unknown data.
// At least 8: small indices have few, large-variance lists.
uint32_t choose_nprobe(uint32_t nlist) {
  return std::clamp<uint32_t>(nlist / 64, 8, 64);
}

ModalityIndex::ModalityIndex(uint32_t dim) : dim_(dim), index_(make_exact(dim)) {}
ModalityIndex::~ModalityIndex() = default;

uint32_t ModalityIndex::nprobe(const IndexOptions& opts) const {
  if (kind_ != Kind::kIvf) return 0;
  uint32_t p = opts.nprobe ? opts.nprobe : choose_nprobe(nlist_);
  return std::min(p, nlist_);
}

ModalityIndexInfo ModalityIndex::info(const IndexOptions& opts) const {
  ModalityIndexInfo i;
  i.index = index_.get();
  i.type = kind_ == Kind::kExact ? "IDMap2,Flat" : "IVF" + std::to_string(nlist_) + ",SQ8";
  i.dim = dim_;
  i.nlist = kind_ == Kind::kIvf ? nlist_ : 0;
  i.nprobe = nprobe(opts);
  i.live = live();
  i.dead = dead();
  i.id_slots = slots_.size();
  return i;
}

void ModalityIndex::add(std::span<const BlockKey> keys, std::span<const float> vecs,
                        const IndexOptions& opts) {
  for (const BlockKey& k : keys) remove(k);
  std::vector<idx_t> ids(keys.size());
  for (auto& id : ids) id = take_id();
  {
    // A few vectors (the daemon adds one chunk at a time) gain nothing from an OpenMP team:
    // IndexIVF's add opens a parallel region even for one vector.
    std::optional<SingleThreadedOmp> one_thread;
    if (keys.size() <= kSmallAdd) one_thread.emplace();
    index_->add_with_ids(static_cast<idx_t>(ids.size()), vecs.data(), ids.data());
  }
  if (rebuilding_) {
    delta_ids_.insert(delta_ids_.end(), ids.begin(), ids.end());
    delta_vecs_.insert(delta_vecs_.end(), vecs.begin(), vecs.end());
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    key_to_id_[keys[i]] = ids[i];
    slots_[static_cast<size_t>(ids[i])] = {keys[i], Slot::kLive};
  }
  dirty_ = true;
  maintain(opts);
}

int64_t ModalityIndex::take_id() {
  if (!free_ids_.empty()) {
    const int64_t id = free_ids_.back();
    free_ids_.pop_back();
    return id;
  }
  slots_.emplace_back();
  return static_cast<int64_t>(slots_.size() - 1);
}

void ModalityIndex::free_slot(int64_t id) {
  slots_[static_cast<size_t>(id)] = {};
  free_ids_.push_back(id);
}

bool ModalityIndex::remove(const BlockKey& key) {
  auto it = key_to_id_.find(key);
  if (it == key_to_id_.end()) return false;
  slots_[static_cast<size_t>(it->second)].state = Slot::kDead;
  dead_ids_.push_back(it->second);
  if (rebuilding_) delta_removed_.push_back(it->second);
  key_to_id_.erase(it);
  dirty_ = true;
  return true;
}

void ModalityIndex::maintain(const IndexOptions& opts, bool purge_all) {
  // The snapshot of a rebuild in flight decodes vectors from index_: no purge meanwhile, and
  // never two rebuilds at once.
  if (rebuilding_) return;
  want_.reset();
  if (kind_ == Kind::kExact && live() > opts.exact_max_vectors) {
    want_ = Kind::kIvf;
  } else if (kind_ == Kind::kIvf && 2 * live() < opts.exact_max_vectors) {
    want_ = Kind::kExact;
  } else if (kind_ == Kind::kIvf && (live() > 4 * trained_n_ || 4 * live() < trained_n_)) {
    want_ = Kind::kIvf;
  }
  const auto total = static_cast<double>(index_->ntotal);
  if (!dead_ids_.empty() &&
      (purge_all || static_cast<double>(dead_ids_.size()) > opts.rebuild_dead_ratio * total)) {
    purge();
  }
}

void ModalityIndex::purge() {
  if (kind_ == Kind::kExact) {
    // One pass over the flat codes for the whole batch.
    faiss::IDSelectorBatch sel(dead_ids_.size(), dead_ids_.data());
    index_->remove_ids(sel);
  } else {
    // The hashtable direct map removes each id in O(1); it accepts only IDSelectorArray.
    faiss::IDSelectorArray sel(dead_ids_.size(), dead_ids_.data());
    index_->remove_ids(sel);
  }
  for (idx_t id : dead_ids_) free_slot(id);
  dead_ids_.clear();
  dirty_ = true;
}

Rebuild::Rebuild() = default;
Rebuild::~Rebuild() = default;
Rebuild::Rebuild(Rebuild&&) noexcept = default;
Rebuild& Rebuild::operator=(Rebuild&&) noexcept = default;

std::optional<Rebuild> ModalityIndex::begin_rebuild() {
  if (!wants_rebuild()) return std::nullopt;
  Rebuild r;
  r.kind = *want_;
  r.dim = dim_;
  r.ids.reserve(key_to_id_.size());
  for (size_t id = 0; id < slots_.size(); ++id)
    if (slots_[id].state == Slot::kLive) r.ids.push_back(static_cast<int64_t>(id));
  want_.reset();
  rebuilding_ = true;
  delta_ids_.clear();
  delta_vecs_.clear();
  delta_removed_.clear();
  return r;
}

void prepare_snapshot(Rebuild& r) {
  // Live vectors in id order (deterministic training sample).
  std::sort(r.ids.begin(), r.ids.end());
  r.vecs.resize(r.ids.size() * r.dim);  // 400 MB at 200k 512-d: zeroed with no lock held
}

void ModalityIndex::snapshot(Rebuild& r, size_t from, size_t to) const {
  for (size_t i = from; i < to; ++i) {
    index_->reconstruct(r.ids[i], &r.vecs[i * dim_]);
    renormalise(&r.vecs[i * dim_], dim_);  // SQ8 decoding is not exactly unit norm
  }
}

void build_rebuild(Rebuild& r) {
  const auto n = static_cast<idx_t>(r.ids.size());
  const uint32_t dim = r.dim;
  if (r.kind == Kind::kExact) {
    r.fresh = make_exact(dim);
    r.nlist = 0;
    r.trained_n = 0;
  } else {
    r.nlist = choose_nlist(static_cast<uint64_t>(n));
    auto ivf = std::make_unique<IvfSq8>(dim, r.nlist);  // "IVF<nlist>,SQ8", inner product
    // Strided sample: the rows are in id (insertion) order, so this spans the history.
    const uint64_t want = std::min<uint64_t>(n, kTrainPointsPerList * r.nlist);
    const uint64_t stride = n / want;
    std::vector<float> sample(want * dim);
    for (uint64_t i = 0; i < want; ++i)
      std::memcpy(&sample[i * dim], &r.vecs[i * stride * dim], dim * sizeof(float));
    ivf->train(static_cast<idx_t>(want), sample.data());
    ivf->set_direct_map_type(faiss::DirectMap::Hashtable);  // reconstruct + O(1) remove
    r.fresh = std::move(ivf);
    r.trained_n = static_cast<uint64_t>(n);
  }
  if (n > 0) r.fresh->add_with_ids(n, r.vecs.data(), r.ids.data());
  r.vecs = {};
}

void catch_up(Rebuild& r, const std::vector<int64_t>& ids, const std::vector<float>& vecs) {
  if (ids.empty()) return;
  r.fresh->add_with_ids(static_cast<idx_t>(ids.size()), vecs.data(), ids.data());
  r.applied += ids.size();
}

void ModalityIndex::copy_delta(const Rebuild& r, size_t max, std::vector<int64_t>* ids,
                               std::vector<float>* vecs) const {
  const size_t n = std::min(max, delta_ids_.size() - r.applied);
  ids->assign(delta_ids_.begin() + r.applied, delta_ids_.begin() + r.applied + n);
  vecs->assign(delta_vecs_.begin() + r.applied * dim_,
               delta_vecs_.begin() + (r.applied + n) * dim_);
}

void ModalityIndex::finish_rebuild(Rebuild& r, const IndexOptions& opts) {
  if (const size_t n = delta_ids_.size() - r.applied; n > 0) {
    std::optional<SingleThreadedOmp> one_thread;
    if (n <= kSmallAdd) one_thread.emplace();
    r.fresh->add_with_ids(static_cast<idx_t>(n), &delta_vecs_[r.applied * dim_],
                          &delta_ids_[r.applied]);
  }
  // Every id removed meanwhile was live at begin_rebuild() or added since: it is in r.fresh,
  // a tombstone still.  The old tombstones are not: their ids are free again.
  std::swap(index_, r.fresh);  // the caller frees the old index after the lock
  kind_ = r.kind;
  nlist_ = r.nlist;
  trained_n_ = r.trained_n;
  for (idx_t id : dead_ids_) slots_[static_cast<size_t>(id)].state = Slot::kFree;
  for (idx_t id : delta_removed_) slots_[static_cast<size_t>(id)].state = Slot::kDead;
  for (idx_t id : dead_ids_)
    if (slots_[static_cast<size_t>(id)].state == Slot::kFree) free_slot(id);
  dead_ids_ = std::move(delta_removed_);
  rebuilding_ = false;
  delta_ids_ = {};
  delta_vecs_ = {};
  delta_removed_ = {};
  dirty_ = true;
  maintain(opts);
}

void ModalityIndex::abort_rebuild() {
  rebuilding_ = false;
  delta_ids_ = {};
  delta_vecs_ = {};
  delta_removed_ = {};
}

std::vector<Candidate> ModalityIndex::candidates(const float* q, size_t k, const IndexOptions& opts,
                                                 bool* more) const {
  std::vector<Candidate> out;
  if (more != nullptr) *more = false;
  const auto total = static_cast<size_t>(index_->ntotal);
  if (total == 0 || live() == 0 || k == 0) return out;
  // Over-fetch by the tombstones' share so that they do not crowd live chunks out; should
  // they still (tombstones bunched near q), fetch again with more.
  size_t kk = std::min(total, k + (k * dead_ids_.size() + live() - 1) / live());
  thread_local std::vector<float> dist;
  thread_local std::vector<idx_t> labels;
  SingleThreadedOmp one_thread;
  for (;;) {
    dist.resize(kk);
    labels.resize(kk);
    const uint64_t t0 = now_ns();
    if (kind_ == Kind::kIvf) {
      faiss::SearchParametersIVF params;
      params.nprobe = nprobe(opts);
      index_->search(1, q, static_cast<idx_t>(kk), dist.data(), labels.data(), &params);
    } else {
      // The flat index under the id map, whose own search() opens an OpenMP region (a futex
      // wake per call) only to translate the labels.
      const auto* idmap = static_cast<const faiss::IndexIDMap2*>(index_.get());
      idmap->index->search(1, q, static_cast<idx_t>(kk), dist.data(), labels.data());
      for (idx_t& l : labels)
        if (l >= 0) l = idmap->id_map[static_cast<size_t>(l)];
    }
    faiss_calls.fetch_add(1, std::memory_order_relaxed);
    faiss_ns.fetch_add(now_ns() - t0, std::memory_order_relaxed);
    out.clear();
    out.reserve(std::min(k, kk));
    size_t found = 0;  // FAISS results, tombstones included
    for (; found < kk && labels[found] >= 0 && out.size() < k; ++found) {
      const auto id = static_cast<size_t>(labels[found]);
      if (id < slots_.size() && slots_[id].state == Slot::kLive)
        out.push_back({slots_[id].key, dist[found]});
    }
    const bool cut = found == kk && kk < total;  // FAISS had more to give
    if (out.size() == k || !cut) {
      if (more != nullptr) *more = cut || (out.size() == k && found < kk && labels[found] >= 0);
      return out;
    }
    kk = std::min(total, 2 * kk + (k - out.size()));
  }
}

bool ModalityIndex::similarity(const BlockKey& key, const float* q, float* out) const {
  auto it = key_to_id_.find(key);
  if (it == key_to_id_.end()) return false;
  thread_local std::vector<float> buf;
  buf.resize(dim_);
  index_->reconstruct(it->second, buf.data());
  *out = faiss::fvec_inner_product(q, buf.data(), dim_);
  return true;
}

std::string ModalityIndex::serialize() const {
  // FAISS writes straight into the file image (a VectorIOWriter and a copy of it doubled the
  // peak memory and the time under the lock: ~0.5 GB more at 1M vectors).  Reserved for what
  // write_index writes, with room to spare: a string that outgrows its reservation doubles
  // it, and holds both buffers while it copies.  IVF,SQ8: a code, an id and a direct-map
  // entry (id, list offset) per vector, and the centroids; exact: a float vector and an id.
  const auto n = static_cast<size_t>(index_->ntotal);
  const size_t faiss_estimate =
      (kind_ == Kind::kIvf ? n * (dim_ + 8 + 16) + size_t{nlist_} * dim_ * 4
                           : n * (size_t{dim_} * 4 + 8)) +
      (size_t{1} << 16);
  std::string out;
  out.reserve(4096 + key_to_id_.size() * 24 + dead_ids_.size() * 8 + faiss_estimate);
  out.append(kMagic, sizeof kMagic);
  put(out, kVersion);
  put(out, static_cast<uint32_t>(kind_));
  put(out, dim_);
  put(out, nlist_);
  put(out, static_cast<uint64_t>(slots_.size()));
  put(out, trained_n_);
  put(out, static_cast<uint64_t>(key_to_id_.size()));
  put(out, static_cast<uint64_t>(dead_ids_.size()));
  const size_t faiss_bytes_at = out.size();
  put(out, uint64_t{0});  // faiss_bytes, set below
  for (size_t id = 0; id < slots_.size(); ++id) {
    if (slots_[id].state != Slot::kLive) continue;
    put(out, static_cast<int64_t>(id));
    put(out, slots_[id].key.lo);
    put(out, slots_[id].key.hi);
  }
  for (idx_t id : dead_ids_) put(out, static_cast<int64_t>(id));
  const size_t faiss_at = out.size();
  StringWriter writer(out);
  faiss::write_index(index_.get(), &writer);
  const auto faiss_bytes = static_cast<uint64_t>(out.size() - faiss_at);
  std::memcpy(out.data() + faiss_bytes_at, &faiss_bytes, sizeof faiss_bytes);
  put(out, static_cast<uint64_t>(XXH3_64bits(out.data(), out.size())));
  return out;
}

Result<std::unique_ptr<ModalityIndex>> ModalityIndex::deserialize(std::string_view bytes) {
  auto corrupt = [](const std::string& why) { return error(Errc::kCorrupt, "index file: " + why); };
  if (bytes.size() < sizeof kMagic + 8 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    return corrupt("bad magic");
  uint64_t sum;
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  if (sum != XXH3_64bits(bytes.data(), bytes.size() - 8)) return corrupt("checksum mismatch");
  std::string_view in = bytes.substr(sizeof kMagic, bytes.size() - sizeof kMagic - 8);
  uint32_t version = 0, kind = 0, dim = 0, nlist = 0;
  uint64_t next_id = 0, trained_n = 0, nkeys = 0, ndead = 0, faiss_bytes = 0;
  if (!get(in, &version) || version != kVersion)
    return corrupt("unsupported version " + std::to_string(version));
  if (!get(in, &kind) || !get(in, &dim) || !get(in, &nlist) || !get(in, &next_id) ||
      !get(in, &trained_n) || !get(in, &nkeys) || !get(in, &ndead) || !get(in, &faiss_bytes))
    return corrupt("short header");
  // Overflow-safe: nkeys * 24 + ndead * 8 + faiss_bytes == in.size().
  if (kind > 1 || dim == 0 || nkeys > in.size() / 24 || ndead > (in.size() - nkeys * 24) / 8 ||
      in.size() - nkeys * 24 - ndead * 8 != faiss_bytes)
    return corrupt("inconsistent header");
  auto mi = std::make_unique<ModalityIndex>(dim);
  mi->kind_ = static_cast<Kind>(kind);
  mi->nlist_ = nlist;
  mi->trained_n_ = trained_n;
  // Every id below next_id has a slot (24 bytes): files from before ids were reused can have
  // holes.  A table that cannot be allocated refuses the file instead of ending the daemon.
  if (next_id < nkeys + ndead || next_id > kMaxIds) return corrupt("bad next id");
  try {
    mi->slots_.resize(next_id);
    mi->free_ids_.reserve(next_id - nkeys - ndead);
  } catch (const std::bad_alloc&) {
    return corrupt("no memory for " + std::to_string(next_id) + " ids");
  }
  for (uint64_t i = 0; i < nkeys; ++i) {
    int64_t id;
    BlockKey key;
    get(in, &id), get(in, &key.lo), get(in, &key.hi);
    if (id < 0 || static_cast<uint64_t>(id) >= next_id ||
        mi->slots_[static_cast<size_t>(id)].state != Slot::kFree ||
        !mi->key_to_id_.emplace(key, id).second)
      return corrupt("bad or repeated id or key");
    mi->slots_[static_cast<size_t>(id)] = {key, Slot::kLive};
  }
  for (uint64_t i = 0; i < ndead; ++i) {
    int64_t id;
    get(in, &id);
    if (id < 0 || static_cast<uint64_t>(id) >= next_id ||
        mi->slots_[static_cast<size_t>(id)].state != Slot::kFree)
      return corrupt("bad or repeated tombstone id");
    mi->slots_[static_cast<size_t>(id)].state = Slot::kDead;
    mi->dead_ids_.push_back(id);
  }
  for (uint64_t id = next_id; id-- > 0;)
    if (mi->slots_[id].state == Slot::kFree) mi->free_ids_.push_back(static_cast<int64_t>(id));
  if (!faiss_part_plausible(in, mi->kind_, dim, nkeys + ndead))
    return corrupt("FAISS part of an unexpected shape");
  try {
    ViewReader reader(in);  // reads the file image in place (no copy of its FAISS part)
    std::unique_ptr<faiss::Index> loaded(faiss::read_index(&reader));
    if (std::string why = loaded_mismatch(*loaded, mi->kind_, dim); !why.empty())
      return corrupt(why);
    mi->index_ = adopt(std::move(loaded));
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(mi->index_.get())) {
      if (mi->kind_ != Kind::kIvf) return corrupt("kind mismatch");
      // serialize() and nprobe() go by the header's nlist: it must be the index's own.
      if (ivf->nlist != mi->nlist_) return corrupt("nlist does not match the FAISS index");
      if (ivf->direct_map.type != faiss::DirectMap::Hashtable)
        ivf->set_direct_map_type(faiss::DirectMap::Hashtable);
    } else if (!dynamic_cast<faiss::IndexIDMap2*>(mi->index_.get()) || mi->kind_ != Kind::kExact) {
      return corrupt("unexpected FAISS index type");
    } else {
      mi->nlist_ = 0;  // an exact index has no lists, whatever the header says
    }
    if (static_cast<uint64_t>(mi->index_->ntotal) != nkeys + ndead)
      return corrupt("id map does not match the FAISS index");
  } catch (const faiss::FaissException& e) {
    return corrupt(std::string("FAISS: ") + e.what());
  } catch (const std::bad_alloc&) {  // a size field FAISS believed (its vectors are resized first)
    return corrupt("FAISS: a size past what can be allocated");
  } catch (const std::length_error&) {
    return corrupt("FAISS: a size past what can be allocated");
  }
  return mi;
}

}  // namespace kvtier::index_detail
