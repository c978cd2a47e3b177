// GPU tier requests of a Session: pool handles (docs/gpu.md).
#include <unistd.h>

#include "daemon/server.h"
#include "daemon/session.h"

namespace kvtier {

flatbuffers::Offset<wire::GpuPoolInfo> gpu_pool_info(flatbuffers::FlatBufferBuilder& fbb,
                                                     const GpuTier& tier,
                                                     const gpu::PoolExport* handle) {
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> ipc;
  if (handle != nullptr && handle->type == gpu::HandleType::kCudaIpc)
    ipc = fbb.CreateVector(reinterpret_cast<const uint8_t*>(handle->ipc_handle.data()),
                           handle->ipc_handle.size());
  auto uuid = fbb.CreateVector(tier.uuid().data(), tier.uuid().size());
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> events;
  if (handle != nullptr && !handle->events.empty())
    events = fbb.CreateVector(reinterpret_cast<const uint8_t*>(handle->events.data()),
                              handle->events.size() * handle->events.front().size());
  return wire::CreateGpuPoolInfo(fbb, tier.arena_id(), tier.device(), tier.pool().size(),
                                 static_cast<uint8_t>(tier.pool().handle_type()), ipc, uuid,
                                 events);
}

Status check_gpu_device(const Engine& engine, int device) {
  if (engine.gpu_tier(device) != nullptr) return {};
  if (engine.gpu_tiers().empty())
    return error(Errc::kUnavailable, "no GPU tier: " + engine.gpu_status());
  std::string have;
  for (const auto& t : engine.gpu_tiers())
    if (t->domain() == 0) have += (have.empty() ? "" : ", ") + std::to_string(t->device());
  return error(Errc::kInvalidArgument, "no GPU tier on device " + std::to_string(device) +
                                           " (pools on device " + have +
                                           "); ask for host memory instead");
}

void Session::on_map_gpu_pool(const wire::MapGpuPoolReq& req, Reply& r) {
  for (const auto& t : server_.engine().gpu_tiers()) {
    if (t->arena_id() != req.id()) continue;
    // A pool holds one isolation domain's blocks: only that domain's readers may map it.
    if (!server_.engine().may_map(peer_, t->domain())) {
      bump(server_.metrics().permission_denied);
      return r.fail(error(Errc::kPermissionDenied, "uid " + std::to_string(peer_.uid) +
                                                       " may not map GPU pool " +
                                                       std::to_string(req.id())));
    }
    auto handle = t->pool().export_handle();
    if (!handle) return r.fail(handle.status());
    if (handle->fd >= 0) r.fds.push_back(handle->fd);  // sent with the reply, then closed
    auto info = gpu_pool_info(r.fbb, *t, &*handle);
    r.set(wire::Response::MapGpuPoolResp, wire::CreateMapGpuPoolResp(r.fbb, info));
    return;
  }
  r.fail(error(Errc::kNotFound, "no GPU pool " + std::to_string(req.id())));
}

}  // namespace kvtier
