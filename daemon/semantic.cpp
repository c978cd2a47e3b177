// Fusion state and semantic search requests of a Session (issue 6).
#include <cmath>

#include "common/names.h"
#include "common/wire.h"
#include "daemon/server.h"
#include "daemon/session.h"

using boost::asio::awaitable;

namespace kvtier {
namespace {

constexpr size_t kMaxSearchK = 1024;

// The values of a modality vector; the error names the modality.
Result<std::vector<float>> floats(const flatbuffers::Vector<float>* v,
                                  const flatbuffers::String* modality) {
  if (Status st = check_name("modality", wire_util::str(modality), kMaxModalityBytes); !st)
    return st;
  if (v == nullptr || v->size() == 0)
    return error(Errc::kInvalidArgument, "modality '" + wire_util::str(modality) + "': no values");
  return std::vector<float>(v->begin(), v->end());
}

}  // namespace

awaitable<void> Session::on_get_fusion(const wire::GetFusionReq& req, Reply& r) {
  auto ns = server_.engine().resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  if (req.key() == nullptr) co_return r.fail(error(Errc::kInvalidArgument, "no chunk key"));
  const BlockKey key = wire_util::from_wire(*req.key());
  auto g = co_await server_.engine().get_fusion(id_, *ns, key);
  if (!g) co_return r.fail(g.status());
  std::vector<flatbuffers::Offset<wire::LeasedBlock>> blocks = {leased_block(r.fbb, *g)};
  r.set(wire::Response::GetResp, wire::CreateGetResp(r.fbb, r.fbb.CreateVector(blocks)));
}

void Session::on_add_embeddings(const wire::AddEmbeddingsReq& req, Reply& r) {
  Engine& engine = server_.engine();
  const std::string ns_name = wire_util::str(req.namespace_());
  auto ns = engine.resolve_namespace(ns_name, peer_);
  if (!ns) return r.fail(ns.status());
  SemanticIndex* index = engine.index();
  if (index == nullptr) return r.fail(error(Errc::kUnavailable, "the semantic index is not open"));
  if (req.chunks() == nullptr || req.chunks()->size() == 0)
    return r.fail(error(Errc::kInvalidArgument, "no chunks"));
  // Each chunk's vectors go in with one add(): a bad chunk fails the request with its key,
  // the chunks before it stay added.
  uint32_t added = 0;
  for (const auto* c : *req.chunks()) {
    if (c->key() == nullptr || c->vectors() == nullptr)
      return r.fail(error(Errc::kInvalidArgument, "a chunk without key or vectors"));
    const BlockKey key = wire_util::from_wire(*c->key());
    // Embedding entries point at cached chunks only.
    if (!engine.is_cached(*ns, key))
      return r.fail(
          error(Errc::kNotFound, "chunk " + key.hex() + " is not cached: put its KV block first"));
    std::vector<std::pair<std::string, std::vector<float>>> vectors;
    for (const auto* v : *c->vectors()) {
      auto values = floats(v->values(), v->modality());
      if (!values) return r.fail(values.status());
      vectors.emplace_back(wire_util::str(v->modality()), std::move(values).value());
    }
    if (Status st = index->add(ns_name, key, vectors); !st)
      return r.fail(error(st.code(), "chunk " + key.hex() + ": " + st.message()));
    ++added;
  }
  r.set(wire::Response::AddEmbeddingsResp, wire::CreateAddEmbeddingsResp(r.fbb, added));
}

awaitable<void> Session::on_search(const wire::SearchReq& req, Reply& r) {
  Engine& engine = server_.engine();
  const std::string ns_name = wire_util::str(req.namespace_());
  auto ns = engine.resolve_namespace(ns_name, peer_);
  if (!ns) co_return r.fail(ns.status());
  SemanticIndex* index = engine.index();
  if (index == nullptr)
    co_return r.fail(error(Errc::kUnavailable, "the semantic index is not open"));
  if (req.queries() == nullptr || req.queries()->size() == 0)
    co_return r.fail(error(Errc::kInvalidArgument, "no queries"));
  if (req.k() == 0 || req.k() > kMaxSearchK)
    co_return r.fail(error(Errc::kInvalidArgument, "k must be 1..1024"));
  std::vector<ModalityQuery> queries;
  queries.reserve(req.queries()->size());
  for (const auto* q : *req.queries()) {
    auto values = floats(q->values(), q->modality());
    if (!values) co_return r.fail(values.status());
    queries.push_back(ModalityQuery{wire_util::str(q->modality()), std::move(values).value(),
                                    q->threshold(), q->weight()});
  }
  const uint32_t ns_id = *ns;
  // alive() takes the engine's lock; the index calls it with none of its own held.
  auto hits = index->search(
      ns_name, queries, req.k(),
      SemanticIndex::AliveBatch([&](std::span<const BlockKey> keys, std::span<uint8_t> out) {
        engine.cached(ns_id, keys, out);
      }));
  if (!hits) co_return r.fail(hits.status());
  bump(server_.metrics().searches);
  if (!hits->empty()) bump(server_.metrics().search_hits);
  flatbuffers::Offset<wire::LeasedBlock> fusion;
  if (req.with_fusion() && !hits->empty()) {
    auto g = co_await engine.get_fusion(id_, ns_id, hits->front().key);
    if (g) fusion = leased_block(r.fbb, *g);
  }
  std::vector<flatbuffers::Offset<wire::SearchHit>> out;
  out.reserve(hits->size());
  std::vector<float> sims;
  for (const auto& h : *hits) {
    sims.clear();
    for (const auto& [modality, sim] : h.similarities) sims.push_back(sim);
    auto key = wire_util::to_wire(h.key);
    out.push_back(wire::CreateSearchHit(r.fbb, &key, h.score, r.fbb.CreateVector(sims)));
  }
  r.set(wire::Response::SearchResp, wire::CreateSearchResp(r.fbb, r.fbb.CreateVector(out), fusion));
}

}  // namespace kvtier
