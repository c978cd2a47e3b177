// Batched puts and puts staged in device memory (docs/protocol.md, "Batched and device puts";
// docs/gpu.md, "Device puts").
#include <unistd.h>

#include "common/wire.h"
#include "daemon/server.h"
#include "daemon/session.h"
#include "tiers/gpu/device_identity.h"

namespace kvtier {

using boost::asio::awaitable;

void Session::free_staged(const Staged& s) {
  if (s.device < 0) {
    staging_->free(s.offset);
    return;
  }
  if (auto it = device_staging_.find(s.device); it != device_staging_.end())
    it->second->space.deallocate(s.offset);
}

awaitable<Result<uint64_t>> Session::seal_staged(uint64_t put_id) {
  auto it = staged_.find(put_id);
  if (it == staged_.end())
    co_return error(Errc::kNotFound, "no pending put " + std::to_string(put_id));
  const Staged staged = it->second;
  staged_.erase(it);
  Engine& engine = server_.engine();
  if (staged.device < 0) {
    const std::span<const std::byte> view(staging_->data(staged.offset), staged.bytes);
    auto stored = co_await engine.seal(id_, put_id, view);
    staging_->free(staged.offset);
    co_return stored;
  }
  DeviceStaging& dev = *device_staging_.at(staged.device);
  auto stored =
      co_await engine.seal_from_device(id_, put_id, *dev.pool, staged.offset, staged.bytes);
  dev.space.deallocate(staged.offset);
  co_return stored;
}

awaitable<void> Session::on_put_batch(const wire::PutBatchReq& req, Reply& r) {
  Engine& engine = server_.engine();
  auto ns = engine.resolve_namespace(wire_util::str(req.namespace_()), peer_);
  if (!ns) co_return r.fail(ns.status());
  if (req.items() == nullptr || req.items()->size() == 0)
    co_return r.fail(error(Errc::kInvalidArgument, "a put batch without items"));
  if (req.source() > 1)
    co_return r.fail(error(Errc::kInvalidArgument,
                           "unknown put staging source " + std::to_string(req.source())));
  const config::SessionConfig& cfg = server_.config().session;
  const bool on_device = req.source() == 1;
  const int device = req.device();
  DeviceStaging* dev = nullptr;
  bool attach_device = false;
  if (on_device) {
    auto it = device_staging_.find(device);
    if (it == device_staging_.end()) {
      auto pool = engine.create_device_staging(device, cfg.device_staging_bytes);
      if (!pool) co_return r.fail(pool.status());
      it = device_staging_.emplace(device, std::make_unique<DeviceStaging>(std::move(*pool))).first;
      attach_device = true;
    }
    dev = it->second.get();
  } else if (!staging_) {
    auto st = Staging::create(cfg.staging_bytes);
    if (!st) co_return r.fail(st.status());
    staging_ = std::move(st).value();
  }
  const uint64_t area = on_device ? dev->pool->size() : cfg.staging_bytes;

  struct Slot {
    Status status;
    uint64_t put_id = 0;
    uint64_t offset = 0;
  };
  std::vector<Slot> slots;
  std::vector<uint64_t> begun;  // put ids, to abort should the reply fail
  slots.reserve(req.items()->size());
  for (const wire::PutItem* item : *req.items()) {
    Slot& slot = slots.emplace_back();
    if (item == nullptr || item->key() == nullptr) {
      slot.status = error(Errc::kInvalidArgument, "put item without a key");
      continue;
    }
    Engine::PutRequest put;
    put.ns = *ns;
    put.key = wire_util::from_wire(*item->key());
    put.client_layout = wire_util::from_wire(item->layout());
    put.device = device;
    if (Status st = validate_put_layout(put.client_layout, area); !st) {
      slot.status = st;
      continue;
    }
    const uint64_t bytes = put.client_layout.total_bytes;
    Result<uint64_t> off = on_device ? dev->space.allocate(bytes) : staging_->allocate(bytes);
    if (!off) {
      slot.status =
          error(Errc::kLimit, std::string(on_device ? "device staging" : "staging") +
                                  " area full (" + std::to_string(area >> 20) +
                                  " MiB): seal or abort pending puts, " + "or raise session." +
                                  (on_device ? "device_staging_bytes" : "staging_bytes"));
      continue;
    }
    const Staged staged{*off, bytes, on_device ? device : -1};
    auto put_id = co_await engine.begin_put(id_, std::move(put));
    if (!put_id) {
      free_staged(staged);
      slot.status = put_id.status();
      continue;
    }
    staged_[*put_id] = staged;
    begun.push_back(*put_id);
    slot.put_id = *put_id;
    slot.offset = *off;
  }
  // Undoes the batch's puts when the reply cannot carry what the client needs.
  auto undo = [&](const Status& why) {
    for (uint64_t id : begun) {
      auto it = staged_.find(id);
      if (it != staged_.end()) {
        free_staged(it->second);
        staged_.erase(it);
      }
      (void)engine.abort_put(id_, id);
    }
    r.fail(why);
  };
  bool attach_host = false;
  if (!on_device && !staging_sent_ && !begun.empty()) {
    int fd = ::dup(staging_->fd());
    if (fd < 0) co_return undo(error(Errc::kIo, "dup staging fd failed"));
    r.fds.push_back(fd);
    staging_sent_ = attach_host = true;
  }
  flatbuffers::Offset<wire::GpuPoolInfo> info;
  if (attach_device) {
    auto handle = dev->pool->export_handle(true);
    if (!handle) {
      device_staging_.erase(device);  // the next batch makes and sends a new one
      co_return undo(handle.status());
    }
    if (handle->fd >= 0) r.fds.push_back(handle->fd);
    flatbuffers::Offset<flatbuffers::Vector<uint8_t>> ipc;
    if (handle->type == gpu::HandleType::kCudaIpc)
      ipc = r.fbb.CreateVector(reinterpret_cast<const uint8_t*>(handle->ipc_handle.data()),
                               handle->ipc_handle.size());
    const GpuTier* tier = engine.gpu_tier(device);
    auto uuid = r.fbb.CreateVector(tier->uuid().data(), tier->uuid().size());
    info = wire::CreateGpuPoolInfo(r.fbb, 0, device, dev->pool->size(),
                                   static_cast<uint8_t>(handle->type), ipc, uuid);
  }
  std::vector<flatbuffers::Offset<wire::PutSlot>> out;
  out.reserve(slots.size());
  for (const Slot& s : slots)
    out.push_back(wire::CreatePutSlot(r.fbb, static_cast<uint16_t>(s.status.code()),
                                      s.status ? 0 : r.fbb.CreateString(s.status.message()),
                                      s.put_id, s.offset));
  r.set(wire::Response::PutBatchResp,
        wire::CreatePutBatchResp(r.fbb, r.fbb.CreateVector(out), attach_host,
                                 on_device ? dev->pool->size() : staging_->size(), info));
}

awaitable<void> Session::on_seal_batch(const wire::SealBatchReq& req, Reply& r) {
  if (req.put_ids() == nullptr)
    co_return r.fail(error(Errc::kInvalidArgument, "a seal batch without put ids"));
  std::vector<uint16_t> codes;
  std::vector<flatbuffers::Offset<flatbuffers::String>> messages;
  std::vector<uint64_t> stored;
  // Copied out first: the ids may sit misaligned, and the seals suspend.
  for (const uint64_t id : wire_util::scalars(req.put_ids())) {
    auto s = co_await seal_staged(id);
    codes.push_back(static_cast<uint16_t>(s ? Errc::kOk : s.status().code()));
    messages.push_back(r.fbb.CreateString(s ? std::string() : s.status().message()));
    stored.push_back(s ? *s : 0);
  }
  r.set(wire::Response::SealBatchResp,
        wire::CreateSealBatchResp(r.fbb, r.fbb.CreateVector(codes), r.fbb.CreateVector(messages),
                                  r.fbb.CreateVector(stored)));
}

}  // namespace kvtier
