#include "index/semantic_index.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <unordered_set>

#include "index/modality_index.h"
#include "index/simd_dot.h"

namespace kvtier {
namespace fs = std::filesystem;
using index_detail::Candidate;
using index_detail::ModalityIndex;
using index_detail::Namespace;
using index_detail::now_ns;

namespace {

// Candidates per queried modality: k + 16 for one modality (headroom for chunks alive()
// rejects), 4k + 16 for several (headroom for the intersection of their thresholds too).
constexpr size_t kCandidateFactor = 4;
constexpr size_t kCandidateExtra = 16;

std::string hex_encode(std::string_view s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out += d[c >> 4], out += d[c & 15];
  return out;
}

std::optional<std::string> hex_decode(std::string_view h) {
  if (h.size() % 2) return std::nullopt;
  auto v = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < h.size(); i += 2) {
    int a = v(h[i]), b = v(h[i + 1]);
    if (a < 0 || b < 0) return std::nullopt;
    out += static_cast<char>(a * 16 + b);
  }
  return out;
}

// Copies `in` into `out` scaled to unit L2 norm.
// L2-normalises `in` into `out`.  nullptr when done, else why not.  A float squared cannot
// overflow a double, nor can a sum of a few million of them: the sum of squares is finite
// exactly when every value is, so one pass with independent accumulators (vectorised; this
// runs on every search) checks and measures at once.
const char* normalise(std::span<const float> in, float* out) {
  constexpr size_t kLanes = 8;
  double acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= in.size(); i += kLanes)
    for (size_t l = 0; l < kLanes; ++l) acc[l] += double(in[i + l]) * double(in[i + l]);
  for (; i < in.size(); ++i) acc[0] += double(in[i]) * double(in[i]);
  double sq = 0;
  for (double a : acc) sq += a;
  if (!std::isfinite(sq)) return "non-finite value";
  if (sq == 0) return "zero norm";
  const float inv = static_cast<float>(1.0 / std::sqrt(sq));
  for (i = 0; i < in.size(); ++i) out[i] = in[i] * inv;
  return nullptr;
}

Status write_atomic(const fs::path& path, const std::string& bytes) {
  const fs::path tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return error(Errc::kIo, "open " + tmp.string() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      Status s = error(Errc::kIo, "write " + tmp.string() + ": " + std::strerror(errno));
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    return error(Errc::kIo, "fsync " + tmp.string() + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return error(Errc::kIo, "rename " + path.string() + ": " + std::strerror(errno));
  int dfd = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) ::fsync(dfd), ::close(dfd);
  return Status::ok();
}

}  // namespace

// Rebuild snapshot: vectors decoded per shared-lock hold (a waiting update waits at most one
// chunk); adds made during the build are copied into the new index under shared locks until
// at most kSwapDelta remain for the exclusive swap.
constexpr size_t kSnapshotChunk = 4096;
constexpr size_t kCatchUpChunk = 65536;
constexpr size_t kSwapDelta = 64;
constexpr int kCatchUpRounds = 16;

SemanticIndex::SemanticIndex(IndexOptions opts) : opts_(std::move(opts)) {
  worker_ = std::thread([this] { rebuild_loop(); });
}

SemanticIndex::~SemanticIndex() {
  {
    std::lock_guard l(job_mu_);
    stop_ = true;
  }
  stopping_ = true;
  job_cv_.notify_all();
  idle_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void SemanticIndex::kick(ModalityIndex* mi) {
  if (!mi->wants_rebuild() || mi->queued) return;
  mi->queued = true;
  {
    std::lock_guard l(job_mu_);
    jobs_.push_back(mi);
  }
  job_cv_.notify_one();
}

void SemanticIndex::wait_for_rebuilds() const {
  std::unique_lock l(job_mu_);
  idle_cv_.wait(l, [&] { return stop_ || (jobs_.empty() && !busy_); });
}

void SemanticIndex::set_rebuild_hook(std::function<void()> hook) {
  std::lock_guard l(job_mu_);
  hook_ = std::move(hook);
}

void SemanticIndex::rebuild_loop() {
  for (;;) {
    ModalityIndex* mi;
    {
      std::unique_lock l(job_mu_);
      job_cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
      if (stop_) break;
      mi = jobs_.front();
      jobs_.pop_front();
      busy_ = true;
    }
    run_rebuild(mi);
    {
      std::lock_guard l(job_mu_);
      busy_ = false;
    }
    idle_cv_.notify_all();
  }
}

void SemanticIndex::run_rebuild(ModalityIndex* mi) {
  const uint64_t t0 = now_ns();
  std::optional<index_detail::Rebuild> r;
  {
    auto lock = write_lock();  // the snapshot's ids; the delta log starts here
    mi->queued = false;
    r = mi->begin_rebuild();
  }
  if (!r) return;
  auto drop = [&] {
    auto lock = write_lock();
    mi->abort_rebuild();
  };
  try {
    // 1. Decode the snapshot under shared locks: searches go on, updates wait <= one chunk.
    index_detail::prepare_snapshot(*r);
    const size_t n = r->ids.size();
    for (size_t from = 0; from < n; from += kSnapshotChunk) {
      if (stopping_) return drop();
      auto lock = read_lock();
      mi->snapshot(*r, from, std::min(n, from + kSnapshotChunk));
    }
    if (stopping_) return drop();
    // 2. Train and fill the new index with no lock held.
    index_detail::build_rebuild(*r);
    std::function<void()> hook;
    {
      std::lock_guard l(job_mu_);
      hook = hook_;
    }
    if (hook) hook();
    // 3. Catch up with the adds made meanwhile, still outside the exclusive lock.
    for (int round = 0; round < kCatchUpRounds; ++round) {
      if (stopping_) return drop();
      std::vector<int64_t> ids;
      std::vector<float> vecs;
      {
        auto lock = read_lock();
        if (mi->pending_adds(*r) <= kSwapDelta) break;
        mi->copy_delta(*r, kCatchUpChunk, &ids, &vecs);
      }
      index_detail::catch_up(*r, ids, vecs);
    }
    if (stopping_) return drop();
    // 4. The rest of the delta, the tombstones, the swap.
    {
      auto lock = write_lock();
      mi->finish_rebuild(*r, opts_);
      kick(mi);
    }
    r.reset();  // the old index, freed outside the lock
  } catch (const std::exception&) {
    drop();  // FAISS failed (e.g. out of memory): the old index stays
    return;
  }
  mi->rebuilds.fetch_add(1, std::memory_order_relaxed);
  mi->last_rebuild_ns.store(now_ns() - t0, std::memory_order_relaxed);
}

Result<std::unique_ptr<SemanticIndex>> SemanticIndex::open(const IndexOptions& opts) {
  if (opts.rebuild_dead_ratio <= 0 || opts.rebuild_dead_ratio > 1)
    return error(Errc::kInvalidArgument, "index: rebuild_dead_ratio must be in (0, 1]");
  std::error_code ec;
  fs::create_directories(opts.dir, ec);
  if (ec) return error(Errc::kIo, "index: create " + opts.dir.string() + ": " + ec.message());
  std::unique_ptr<SemanticIndex> idx(new SemanticIndex(opts));
  for (const auto& nsdir : fs::directory_iterator(opts.dir, ec)) {
    const std::string dname = nsdir.path().filename().string();
    if (!nsdir.is_directory() || dname.rfind("ns-", 0) != 0) continue;
    auto ns = hex_decode(std::string_view(dname).substr(3));
    if (!ns) continue;
    auto space = std::make_unique<Namespace>(*ns);
    for (const auto& f : fs::directory_iterator(nsdir.path(), ec)) {
      const std::string fname = f.path().filename().string();
      if (fname.ends_with(".tmp")) {  // an interrupted save
        fs::remove(f.path(), ec);
        continue;
      }
      if (fname.rfind("m-", 0) != 0 || !fname.ends_with(".kvidx")) continue;
      auto mod = hex_decode(std::string_view(fname).substr(2, fname.size() - 2 - 6));
      if (!mod) continue;
      std::ifstream in(f.path(), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) return error(Errc::kIo, "index: read " + f.path().string());
      auto mi = ModalityIndex::deserialize(bytes);
      if (!mi)
        return error(mi.status().code(), mi.status().message() + " (" + f.path().string() + ")");
      space->modalities.emplace(*mod, std::move(mi.value()));
    }
    idx->namespaces_.push_back(std::move(space));
  }
  if (ec) return error(Errc::kIo, "index: list " + opts.dir.string() + ": " + ec.message());
  {
    // A file saved while a rebuild ran holds the old index: rebuild it again.
    auto lock = idx->write_lock();
    for (const auto& space : idx->namespaces_)
      for (auto& [m, mi] : space->modalities) {
        mi->maintain(opts);
        idx->kick(mi.get());
      }
  }
  return idx;
}

std::shared_lock<std::shared_mutex> SemanticIndex::read_lock() const {
  { std::lock_guard pass(gate_); }
  return std::shared_lock(mu_);
}

std::unique_lock<std::shared_mutex> SemanticIndex::write_lock() {
  std::lock_guard hold(gate_);
  return std::unique_lock(mu_);
}

Namespace* SemanticIndex::find_ns(std::string_view ns) const {
  for (const auto& n : namespaces_)
    if (n->name == ns) return n.get();
  return nullptr;
}

Namespace& SemanticIndex::ns_for_write(std::string_view ns) {
  if (Namespace* n = find_ns(ns)) return *n;
  namespaces_.push_back(std::make_unique<Namespace>(std::string(ns)));
  return *namespaces_.back();
}

Status SemanticIndex::add(std::string_view ns, const BlockKey& chunk,
                          const std::vector<std::pair<std::string, std::vector<float>>>& vectors) {
  if (vectors.empty()) return error(Errc::kInvalidArgument, "index add: no vectors");
  std::set<std::string_view> seen;
  for (const auto& [m, v] : vectors) {
    if (m.empty()) return error(Errc::kInvalidArgument, "index add: empty modality name");
    if (!seen.insert(m).second)
      return error(Errc::kInvalidArgument, "index add: modality '" + m + "' given twice");
    if (v.empty()) return error(Errc::kInvalidArgument, "index add: empty vector for '" + m + "'");
  }
  // Validate and normalise everything before touching the index: all or nothing.
  std::vector<std::vector<float>> normed(vectors.size());
  for (size_t i = 0; i < vectors.size(); ++i) {
    normed[i].resize(vectors[i].second.size());
    if (const char* bad = normalise(vectors[i].second, normed[i].data()))
      return error(Errc::kInvalidArgument, "index add '" + vectors[i].first + "': " + bad);
  }
  auto lock = write_lock();
  if (Namespace* space = find_ns(ns)) {
    for (const auto& [m, v] : vectors) {
      ModalityIndex* mi = space->find(m);
      if (mi && mi->dim() != v.size())
        return error(Errc::kInvalidArgument, "index add: modality '" + m + "' has dimension " +
                                                 std::to_string(mi->dim()) + ", got " +
                                                 std::to_string(v.size()));
    }
  }
  Namespace& space = ns_for_write(ns);
  for (size_t i = 0; i < vectors.size(); ++i) {
    auto& slot = space.modalities[vectors[i].first];
    if (!slot) slot = std::make_unique<ModalityIndex>(static_cast<uint32_t>(normed[i].size()));
    slot->add(std::span(&chunk, 1), normed[i], opts_);
    kick(slot.get());
  }
  return Status::ok();
}

Status SemanticIndex::add_batch(std::string_view ns, std::string_view modality,
                                std::span<const BlockKey> chunks, std::span<const float> vectors) {
  if (modality.empty()) return error(Errc::kInvalidArgument, "index add: empty modality name");
  if (chunks.empty()) return Status::ok();
  if (vectors.empty() || vectors.size() % chunks.size() != 0)
    return error(Errc::kInvalidArgument, "index add: vectors is not chunks x dimension");
  const size_t dim = vectors.size() / chunks.size();
  std::unordered_set<BlockKey, BlockKeyHash> uniq(chunks.begin(), chunks.end());
  if (uniq.size() != chunks.size())
    return error(Errc::kInvalidArgument, "index add: a chunk given twice");
  std::vector<float> normed(vectors.size());
  for (size_t i = 0; i < chunks.size(); ++i)
    if (const char* bad = normalise(vectors.subspan(i * dim, dim), &normed[i * dim]))
      return error(Errc::kInvalidArgument, std::string("index add: ") + bad);
  auto lock = write_lock();
  if (Namespace* space = find_ns(ns);
      space && space->find(modality) && space->find(modality)->dim() != dim)
    return error(Errc::kInvalidArgument,
                 "index add: modality '" + std::string(modality) + "' has dimension " +
                     std::to_string(space->find(modality)->dim()) + ", got " + std::to_string(dim));
  auto& slot = ns_for_write(ns).modalities[std::string(modality)];
  if (!slot) slot = std::make_unique<ModalityIndex>(static_cast<uint32_t>(dim));
  slot->add(chunks, normed, opts_);
  kick(slot.get());
  return Status::ok();
}

void SemanticIndex::remove(std::string_view ns, const BlockKey& chunk) {
  auto lock = write_lock();
  Namespace* space = find_ns(ns);
  if (!space) return;
  for (auto& [m, mi] : space->modalities)
    if (mi->remove(chunk)) {
      mi->maintain(opts_);
      kick(mi.get());
    }
}

Result<std::vector<IndexHit>> SemanticIndex::search(
    std::string_view ns, const std::vector<ModalityQuery>& queries, size_t k,
    const std::function<bool(const BlockKey&)>& alive) {
  if (!alive) return search(ns, queries, k, AliveBatch());
  return search(ns, queries, k, [&](std::span<const BlockKey> keys, std::span<uint8_t> out) {
    for (size_t i = 0; i < keys.size(); ++i) out[i] = alive(keys[i]);
  });
}

Result<std::vector<IndexHit>> SemanticIndex::search(std::string_view ns,
                                                    const std::vector<ModalityQuery>& queries,
                                                    size_t k, const AliveBatch& alive) {
  if (queries.empty()) return error(Errc::kInvalidArgument, "index search: no queries");
  struct Q {
    const ModalityQuery* q;
    ModalityIndex* mi;
    std::vector<float> v;
  };
  std::vector<Q> qs(queries.size());
  double wsum = 0;
  // Chunks that pass every threshold; their per-modality cosines are sims[at, at + qs.size()).
  struct Scored {
    BlockKey key;
    float score;
    size_t at;
  };
  std::vector<Scored> ranked;
  std::vector<float> sims;
  std::vector<IndexHit> out;
  std::vector<BlockKey> gone;  // chunks alive() rejected: pruned below
  const uint64_t t0 = now_ns();
  // One modality asks FAISS for exactly k (its own result size: no headroom to pay for on
  // every search); should alive() reject some of a full list, the search runs again with a
  // bigger one (rare: the daemon removes a chunk's vectors when the chunk leaves the cache).
  size_t fetch = k;
  for (int round = 0;; ++round) {
    bool more = false;  // the candidate list was cut at `fetch`: more chunks may pass
    ranked.clear();
    sims.clear();
    {
      auto lock = read_lock();
      Namespace* space = find_ns(ns);
      if (round == 0)
        for (size_t i = 0; i < queries.size(); ++i) {
          const ModalityQuery& q = queries[i];
          for (size_t j = 0; j < i; ++j)
            if (queries[j].modality == q.modality)
              return error(Errc::kInvalidArgument,
                           "index search: modality '" + q.modality + "' given twice");
          ModalityIndex* mi = space ? space->find(q.modality) : nullptr;
          if (!mi)
            return error(Errc::kInvalidArgument, "index search: unknown modality '" + q.modality +
                                                     "' in namespace '" + std::string(ns) + "'");
          if (q.vector.size() != mi->dim())
            return error(Errc::kInvalidArgument, "index search: modality '" + q.modality +
                                                     "' has dimension " +
                                                     std::to_string(mi->dim()) + ", got " +
                                                     std::to_string(q.vector.size()));
          if (!std::isfinite(q.weight) || q.weight < 0 || !std::isfinite(q.threshold))
            return error(Errc::kInvalidArgument,
                         "index search: bad weight or threshold for '" + q.modality + "'");
          qs[i].q = &q;
          qs[i].mi = mi;
          qs[i].v.resize(q.vector.size());
          if (const char* bad = normalise(q.vector, qs[i].v.data()))
            return error(Errc::kInvalidArgument, "index search '" + q.modality + "': " + bad);
          wsum += q.weight;
        }
      if (wsum <= 0) return error(Errc::kInvalidArgument, "index search: weights sum to 0");
      if (k == 0) return std::vector<IndexHit>{};

      if (qs.size() == 1) {
        // One modality: FAISS's inner products are the cosines (for IVF,SQ8 those of the
        // decoded vectors, which similarity() would compute again), so no re-scoring.
        const Q& q = qs[0];
        const std::vector<Candidate> cands = q.mi->candidates(q.v.data(), fetch, opts_, &more);
        for (const Candidate& c : cands) {
          if (c.cos < q.q->threshold) {
            more = false;  // best first: every later candidate is below the threshold too
            break;
          }
          if (std::find(gone.begin(), gone.end(), c.key) != gone.end()) continue;
          ranked.push_back(
              {c.key, static_cast<float>(double(q.q->weight) * c.cos / wsum), sims.size()});
          sims.push_back(c.cos);
        }
      } else {
        // The union of each queried modality's top k', scored on every queried modality
        // from the stored vectors (a chunk may be a candidate in one modality only).
        const size_t kprime = kCandidateFactor * k + kCandidateExtra;
        std::vector<BlockKey> cands;
        std::unordered_set<BlockKey, BlockKeyHash> seen;
        for (const Q& q : qs)
          for (const Candidate& c : q.mi->candidates(q.v.data(), kprime, opts_, nullptr))
            if (seen.insert(c.key).second) cands.push_back(c.key);
        for (const BlockKey& key : cands) {
          const size_t at = sims.size();
          double score = 0;
          bool pass = true;
          for (const Q& q : qs) {
            float cos;
            if (!q.mi->similarity(key, q.v.data(), &cos) || cos < q.q->threshold) {
              pass = false;
              break;
            }
            sims.push_back(cos);
            score += double(q.q->weight) * cos;
          }
          if (pass)
            ranked.push_back({key, static_cast<float>(score / wsum), at});
          else
            sims.resize(at);
        }
      }
    }
    std::sort(ranked.begin(), ranked.end(), [](const Scored& a, const Scored& b) {
      return a.score != b.score ? a.score > b.score : a.key < b.key;
    });

    // The alive check runs without mu_: it may take the caller's locks.  It is asked about
    // as many chunks as hits are missing, in rank order, until k are found.
    out.clear();
    out.reserve(std::min(k, ranked.size()));
    std::vector<BlockKey> ask;
    std::vector<uint8_t> ok;
    for (size_t next = 0; next < ranked.size() && out.size() < k;) {
      const size_t n = std::min(k - out.size(), ranked.size() - next);
      ask.clear();
      for (size_t i = 0; i < n; ++i) ask.push_back(ranked[next + i].key);
      ok.assign(n, 1);
      if (alive) alive(ask, ok);
      for (size_t i = 0; i < n; ++i, ++next) {
        const Scored& r = ranked[next];
        if (!ok[i]) {
          gone.push_back(r.key);
          continue;
        }
        IndexHit& h = out.emplace_back();
        h.key = r.key;
        h.score = r.score;
        h.similarities.reserve(qs.size());
        for (size_t j = 0; j < qs.size(); ++j)
          h.similarities.emplace_back(qs[j].q->modality, sims[r.at + j]);
      }
    }
    if (out.size() == k || !more || round == 3) break;
    fetch = 4 * fetch + gone.size();
  }
  const uint64_t dt = now_ns() - t0;
  for (const Q& q : qs) {  // ModalityIndex objects outlive *this's locks (never destroyed)
    q.mi->searches.fetch_add(1, std::memory_order_relaxed);
    (out.empty() ? q.mi->misses : q.mi->hits).fetch_add(1, std::memory_order_relaxed);
    q.mi->search_ns.fetch_add(dt, std::memory_order_relaxed);
  }
  if (!gone.empty()) {
    auto lock = write_lock();
    if (Namespace* space = find_ns(ns))
      for (auto& [m, mi] : space->modalities) {
        bool any = false;
        for (const BlockKey& key : gone) any |= mi->remove(key);
        if (any) {
          mi->maintain(opts_);
          kick(mi.get());
        }
      }
  }
  return out;
}

Status SemanticIndex::save() {
  std::lock_guard save_lock(save_mu_);
  struct Pending {
    ModalityIndex* mi;
    fs::path path;
    std::string bytes;
  };
  const uint64_t t0 = now_ns();
  std::vector<Pending> writes;
  {
    // Purging changes the index: exclusive.  An update that lands between this section and
    // the next marks its index dirty again, so the next save writes it (again).
    auto lock = write_lock();
    for (const auto& space : namespaces_) {
      const fs::path dir = opts_.dir / ("ns-" + hex_encode(space->name));
      for (auto& [m, mi] : space->modalities) {
        if (!mi->dirty()) continue;
        mi->maintain(opts_, /*purge_all=*/true);  // no purge while rebuilding: tombstones
        kick(mi.get());                           // are then saved as such
        writes.push_back({mi.get(), dir / ("m-" + hex_encode(m) + ".kvidx"), {}});
        mi->mark_clean();
      }
    }
  }
  if (writes.empty()) return Status::ok();
  // Serialising copies every code (~0.5 GB at 1M 512-d vectors): under the shared lock, one
  // modality index at a time, so searches go on meanwhile (under the exclusive lock they
  // stalled for the whole copy).  An update that arrives meanwhile waits for the copy in
  // progress, and so do the searches behind it (writers go first: docs/index.md, "Threads").
  try {
    for (Pending& w : writes) {
      auto lock = read_lock();
      w.bytes = w.mi->serialize();
    }
  } catch (const std::exception& e) {  // no memory for the file image, or FAISS refused
    auto lock = write_lock();
    for (Pending& w : writes) w.mi->mark_dirty();
    save_failures_.fetch_add(1, std::memory_order_relaxed);
    return error(Errc::kIo, std::string("index: serialising failed: ") + e.what());
  }
  // Files are written outside mu_: searches and updates go on meanwhile.
  Status result;
  for (size_t i = 0; i < writes.size(); ++i) {
    std::error_code ec;
    fs::create_directories(writes[i].path.parent_path(), ec);
    Status s = ec ? error(Errc::kIo, "index: mkdir " + writes[i].path.parent_path().string() +
                                         ": " + ec.message())
                  : write_atomic(writes[i].path, writes[i].bytes);
    writes[i].bytes = {};
    if (!s) {
      auto lock = write_lock();
      for (size_t j = i; j < writes.size(); ++j) writes[j].mi->mark_dirty();
      save_failures_.fetch_add(1, std::memory_order_relaxed);
      return s;
    }
  }
  saves_.fetch_add(1, std::memory_order_relaxed);
  last_save_ns_.store(now_ns() - t0, std::memory_order_relaxed);
  return result;
}

std::optional<ModalityIndexInfo> SemanticIndex::info(std::string_view ns,
                                                     std::string_view modality) const {
  wait_for_rebuilds();
  auto lock = read_lock();
  Namespace* space = find_ns(ns);
  ModalityIndex* mi = space ? space->find(modality) : nullptr;
  if (!mi) return std::nullopt;
  return mi->info(opts_);
}

}  // namespace kvtier
