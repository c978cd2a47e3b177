// The semantic index's counters and gauges (common/counters.h): kvtier_index_*, per modality
// index labelled namespace and modality.  stats() is the same visit into JSON, plus what is
// not a number (the settings, the index type) and the means kvtierctl prints.
#include "common/counters_json.h"
#include "index/modality_index.h"
#include "index/semantic_index.h"
#include "index/simd_dot.h"

namespace kvtier {
namespace {

using index_detail::ModalityIndex;

// One modality index; the caller holds the index's lock (shared), which keeps `mi` alive.
void visit_modality(const ModalityIndex& mi, const ModalityIndexInfo& i, Labels labels,
                    CounterVisitor& v) {
  v.gauge({"kvtier_index_vectors", "chunks with a vector in this modality", "vectors"}, labels,
          i.live);
  v.gauge({"kvtier_index_dead_vectors",
           "tombstones of removed or replaced vectors still inside the FAISS index", "dead"},
          labels, i.dead);
  v.gauge(
      {"kvtier_index_id_slots", "FAISS ids in use or free for reuse (24 bytes each)", "id_slots"},
      labels, i.id_slots);
  v.gauge({"kvtier_index_dimensions", "vector dimension of the modality", "dim"}, labels, i.dim);
  v.gauge({"kvtier_index_ivf_lists", "IVF lists (0: exact index)", "nlist"}, labels, i.nlist);
  v.gauge({"kvtier_index_ivf_probes", "IVF lists probed per search (0: exact index)", "nprobe"},
          labels, i.nprobe);
  v.counter(
      {"kvtier_index_searches_total", "completed searches that queried this modality", "searches"},
      labels, mi.searches.load(std::memory_order_relaxed));
  v.counter({"kvtier_index_search_hits_total", "searches that returned at least one chunk", "hits"},
            labels, mi.hits.load(std::memory_order_relaxed));
  v.counter({"kvtier_index_search_misses_total", "searches that returned no chunk", "misses"},
            labels, mi.misses.load(std::memory_order_relaxed));
  v.counter({"kvtier_index_search_seconds_total",
             "seconds in whole SemanticIndex::search calls (a multi-modality search counts "
             "in each of its modalities)",
             "search_us_total", 1e6},
            labels, double(mi.search_ns.load(std::memory_order_relaxed)) / 1e9);
  v.counter({"kvtier_index_faiss_calls_total", "FAISS index searches inside those searches",
             "faiss_calls"},
            labels, mi.faiss_calls.load(std::memory_order_relaxed));
  v.counter({"kvtier_index_faiss_seconds_total", "seconds in FAISS index searches",
             "faiss_us_total", 1e6},
            labels, double(mi.faiss_ns.load(std::memory_order_relaxed)) / 1e9);
  v.gauge({"kvtier_index_rebuilding", "1 while this modality index is being rebuilt"}, labels,
          mi.rebuilding() ? 1 : 0);
  v.counter({"kvtier_index_rebuilds_total",
             "finished rebuilds (exact to IVF, back to exact, IVF retraining)", "rebuilds"},
            labels, mi.rebuilds.load(std::memory_order_relaxed));
  v.gauge({"kvtier_index_last_rebuild_seconds", "wall time of the last rebuild (0 before one)",
           "last_rebuild_ms", 1e3},
          labels, double(mi.last_rebuild_ns.load(std::memory_order_relaxed)) / 1e9);
}

double mean(const nlohmann::json& o, const char* total, const char* count) {
  const uint64_t n = o.value(count, uint64_t{0});
  return n ? o.value(total, 0.0) / double(n) : 0.0;
}

}  // namespace

void SemanticIndex::visit_totals(CounterVisitor& v) const {
  v.counter({"kvtier_index_saves_total", "index saves that wrote files", "saves"}, {},
            saves_.load(std::memory_order_relaxed));
  v.counter({"kvtier_index_save_failures_total",
             "index saves that failed (retried at the next interval)", "save_failures"},
            {}, save_failures_.load(std::memory_order_relaxed));
  v.gauge({"kvtier_index_last_save_seconds",
           "wall time of the last save that wrote: purge, serialise, write, fsync", "last_save_ms",
           1e3},
          {}, double(last_save_ns_.load(std::memory_order_relaxed)) / 1e9);
}

void SemanticIndex::visit_counters(CounterVisitor& v) const {
  visit_totals(v);
  auto lock = read_lock();
  for (const auto& space : namespaces_) {
    for (const auto& [m, mi] : space->modalities) {
      const Label labels[] = {{"namespace", space->name}, {"modality", m}};
      visit_modality(*mi, mi->info(opts_), labels, v);
    }
  }
}

nlohmann::json SemanticIndex::stats() const {
  nlohmann::json j = {{"dir", opts_.dir.string()},
                      {"kernels", index_detail::simd_level()},
                      {"exact_max_vectors", opts_.exact_max_vectors},
                      {"rebuild_dead_ratio", opts_.rebuild_dead_ratio}};
  JsonCounterVisitor totals(j);
  visit_totals(totals);
  nlohmann::json nss = nlohmann::json::object();
  bool rebuilding = false;
  {
    auto lock = read_lock();
    for (const auto& space : namespaces_) {
      nlohmann::json& mods = nss[space->name] = nlohmann::json::object();
      for (const auto& [m, mi] : space->modalities) {
        const ModalityIndexInfo info = mi->info(opts_);
        nlohmann::json& o = mods[m];
        JsonCounterVisitor out(o);
        visit_modality(*mi, info, {}, out);
        o["type"] = info.type;
        o["rebuilding"] = mi->rebuilding();
        o["search_us_mean"] = mean(o, "search_us_total", "searches");
        o["faiss_us_mean"] = mean(o, "faiss_us_total", "faiss_calls");
        rebuilding |= mi->rebuilding();
      }
    }
  }
  j["rebuilding"] = rebuilding;
  j["namespaces"] = std::move(nss);
  return j;
}

}  // namespace kvtier
