// Fusion state and semantic search calls of the C++ client.
#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {

Result<Lease> Client::get_fusion(std::string_view ns, const BlockKey& chunk) {
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto key = wire_util::to_wire(chunk);
  auto req = wire::CreateGetFusionReq(fbb, fbb.CreateString(ns.data(), ns.size()), &key);
  auto resp = impl_->call(fbb, wire::Request::GetFusionReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_GetResp();
  if (body == nullptr || body->blocks() == nullptr || body->blocks()->size() != 1)
    return error(Errc::kProtocol, "bad get_fusion reply");
  return LeaseBuilder::build(impl_, {body->blocks()->Get(0)});
}

Result<LookupResult> Client::lookup_with_fusion(std::string_view ns,
                                                std::span<const BlockKey> keys) {
  LookupResult out;
  if (keys.empty()) return out;
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb(64 + keys.size() * 16);
  auto req = wire::CreateLookupReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                   wire_util::keys_to_wire(fbb, keys), true);
  auto resp = impl_->call(fbb, wire::Request::LookupReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_LookupResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad lookup reply");
  out.matched = body->matched();
  if (body->fusion() != nullptr) {
    auto lease = LeaseBuilder::build(impl_, {body->fusion()});
    if (!lease) return lease.status();
    out.fusion = std::move(lease).value();
  }
  return out;
}

Status Client::add_embeddings(std::string_view ns, std::span<const ChunkEmbeddings> chunks) {
  MutexLock lock(impl_->mu);
  // Sized up front: a batch of 2000 512-d vectors is 4 MiB, grown by doubling from 1 KiB.
  size_t bytes = 256 + ns.size();
  for (const auto& c : chunks)
    for (const auto& v : c.vectors) bytes += 64 + v.modality.size() + v.values.size() * 4;
  flatbuffers::FlatBufferBuilder fbb(bytes);
  std::vector<flatbuffers::Offset<wire::ChunkEmbeddings>> cs;
  for (const auto& c : chunks) {
    std::vector<flatbuffers::Offset<wire::ModalityVector>> vs;
    for (const auto& v : c.vectors)
      vs.push_back(wire::CreateModalityVector(fbb, fbb.CreateString(v.modality),
                                              fbb.CreateVector(v.values)));
    auto key = wire_util::to_wire(c.key);
    cs.push_back(wire::CreateChunkEmbeddings(fbb, &key, fbb.CreateVector(vs)));
  }
  auto req = wire::CreateAddEmbeddingsReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                          fbb.CreateVector(cs));
  return impl_->call(fbb, wire::Request::AddEmbeddingsReq, req.Union()).status();
}

Result<SearchResult> Client::search(std::string_view ns, std::span<const SearchQuery> queries,
                                    uint32_t k, bool with_fusion) {
  MutexLock lock(impl_->mu);
  size_t bytes = 256 + ns.size();
  for (const auto& q : queries) bytes += 64 + q.modality.size() + q.values.size() * 4;
  flatbuffers::FlatBufferBuilder fbb(bytes);
  std::vector<flatbuffers::Offset<wire::ModalityQuery>> qs;
  for (const auto& q : queries)
    qs.push_back(wire::CreateModalityQuery(fbb, fbb.CreateString(q.modality),
                                           fbb.CreateVector(q.values), q.threshold, q.weight));
  auto req = wire::CreateSearchReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                   fbb.CreateVector(qs), k, with_fusion);
  auto resp = impl_->call(fbb, wire::Request::SearchReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_SearchResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad search reply");
  SearchResult out;
  if (body->hits()) {
    out.hits.reserve(body->hits()->size());
    for (const auto* h : *body->hits()) {
      SearchHit hit;
      if (h->key()) hit.key = wire_util::from_wire(*h->key());
      hit.score = h->score();
      if (h->similarities())
        hit.similarities.assign(h->similarities()->begin(), h->similarities()->end());
      out.hits.push_back(std::move(hit));
    }
  }
  if (body->fusion() != nullptr) {
    auto lease = LeaseBuilder::build(impl_, {body->fusion()});
    if (!lease) return lease.status();
    out.fusion = std::move(lease).value();
  }
  return out;
}

}  // namespace kvtier
