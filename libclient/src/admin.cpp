// Stats and admin calls of the C++ client: each returns the daemon's JSON document.
#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {
namespace {

template <typename Build>
Result<std::string> text_call(Client::Impl& impl, wire::Request type, Build build) {
  MutexLock lock(impl.mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto body = build(fbb);
  auto resp = impl.call(fbb, type, body.Union());
  if (!resp) return resp.status();
  const auto* t = (*resp)->msg->body_as_TextResp();
  if (t == nullptr) return error(Errc::kProtocol, "bad admin reply");
  return wire_util::str(t->json());
}

}  // namespace

Result<std::string> Client::stats_json() {
  return text_call(*impl_, wire::Request::StatsReq,
                   [](auto& fbb) { return wire::CreateStatsReq(fbb); });
}

Result<std::string> Client::health_json() {
  return text_call(*impl_, wire::Request::HealthReq,
                   [](auto& fbb) { return wire::CreateHealthReq(fbb); });
}

Result<std::string> Client::clients_json() {
  return text_call(*impl_, wire::Request::ClientsReq,
                   [](auto& fbb) { return wire::CreateClientsReq(fbb); });
}

Result<std::string> Client::config_json() {
  return text_call(*impl_, wire::Request::ConfigReq,
                   [](auto& fbb) { return wire::CreateConfigReq(fbb); });
}

Result<std::string> Client::list_json(std::string_view ns, uint32_t limit, bool fusion_only,
                                      bool pinned_only) {
  return text_call(*impl_, wire::Request::ListReq, [&](auto& fbb) {
    return wire::CreateListReq(fbb, fbb.CreateString(ns.data(), ns.size()), limit, fusion_only,
                               pinned_only);
  });
}

Result<EvictCount> Client::evict(std::string_view ns, std::span<const BlockKey> keys, bool all,
                                 TierSel tier) {
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto req =
      wire::CreateEvictReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                           wire_util::keys_to_wire(fbb, keys), all, static_cast<uint8_t>(tier));
  auto resp = impl_->call(fbb, wire::Request::EvictReq, req.Union());
  if (!resp) return resp.status();
  const auto* e = (*resp)->msg->body_as_EvictResp();
  if (e == nullptr) return error(Errc::kProtocol, "bad evict reply");
  return EvictCount{e->evicted(), e->skipped_leased(), e->bytes(), e->disk_evicted(),
                    e->gpu_evicted()};
}

namespace {
template <typename Make>
Result<std::string> job_call(Client::Impl& impl, wire::Request type, Make make,
                             const Client::ProgressFn& progress) {
  MutexLock lock(impl.mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto body = make(fbb);
  auto resp = impl.call(fbb, type, body.Union(), progress);
  if (!resp) return resp.status();
  const auto* t = (*resp)->msg->body_as_TextResp();
  if (t == nullptr) return error(Errc::kProtocol, "bad job reply");
  return wire_util::str(t->json());
}
}  // namespace

Result<std::string> Client::compact(const ProgressFn& progress) {
  return job_call(
      *impl_, wire::Request::CompactReq, [](auto& fbb) { return wire::CreateCompactReq(fbb); },
      progress);
}

Result<std::string> Client::verify(const ProgressFn& progress) {
  return job_call(
      *impl_, wire::Request::VerifyReq, [](auto& fbb) { return wire::CreateVerifyReq(fbb); },
      progress);
}

}  // namespace kvtier
