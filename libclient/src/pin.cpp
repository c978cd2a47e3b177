// Pins of the C++ client (docs/protocol.md, "Pins"): one round trip each.
#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {

Result<PinCount> Client::pin(std::string_view ns, std::span<const BlockKey> keys,
                             PinOptions options) {
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  int device = -1;
  if (options.gpu) {
    auto d = impl_->gpu_request_device(options.device >= 0 ? options.device : impl_->device);
    if (!d) return d.status();
    device = *d;
  }
  auto req = wire::CreatePinReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                wire_util::keys_to_wire(fbb, keys), options.ttl_ms,
                                options.gpu ? 0 : 1, device);
  auto resp = impl_->call(fbb, wire::Request::PinReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_PinResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad pin reply");
  return PinCount{body->pinned(), body->refreshed(), body->pinned_bytes(), body->quota_bytes()};
}

Result<uint32_t> Client::unpin(std::string_view ns, std::span<const BlockKey> keys) {
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto req = wire::CreateUnpinReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                  wire_util::keys_to_wire(fbb, keys));
  auto resp = impl_->call(fbb, wire::Request::UnpinReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_UnpinResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad unpin reply");
  return body->unpinned();
}

}  // namespace kvtier
