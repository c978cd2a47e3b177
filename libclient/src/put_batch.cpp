// Batched puts, from host or device memory (docs/protocol.md, "Batched and device puts";
// docs/gpu.md, "Device puts"): one PutBatchReq reserves every block and its staging range, the
// client copies every tensor (device-to-device into a device staging, or into the staging
// memfd) in one batch of copies, and one SealBatchReq seals them.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/layout.h"
#include "common/wire.h"
#include "libclient/src/impl.h"
#include "tiers/gpu/device_copy.h"

namespace kvtier {

Status Client::Impl::map_staging(int fd, uint64_t bytes) {
  if (fd < 0) return error(Errc::kProtocol, "staging descriptor missing");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap staging: ") + std::strerror(e));
  staging = static_cast<std::byte*>(p);
  staging_bytes = bytes;
  return {};
}

Result<BlockLayout> staged_layout(std::span<const TensorIn> tensors) {
  BlockLayout layout;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    TensorLayout tl;
    tl.name = t.name;
    tl.dtype = t.dtype;
    tl.shape = t.shape;
    tl.nf4_layout = t.nf4_layout;
    tl.offset = off;
    tl.bytes = tl.raw_bytes = tl.elements() * dtype_size(t.dtype);
    if (t.segments.empty()) {
      if (t.data == nullptr && tl.bytes > 0)
        return error(Errc::kInvalidArgument, "tensor '" + t.name + "' has no data");
    } else {
      uint64_t sum = 0;
      for (const Segment& s : t.segments) {
        if (s.data == nullptr && s.bytes > 0)
          return error(Errc::kInvalidArgument, "tensor '" + t.name + "': a piece has no data");
        if (__builtin_add_overflow(sum, s.bytes, &sum)) sum = UINT64_MAX;
      }
      if (sum != tl.bytes)
        return error(Errc::kInvalidArgument,
                     "tensor '" + t.name + "': its pieces hold " + std::to_string(sum) +
                         " bytes, its shape and dtype " + std::to_string(tl.bytes));
    }
    off = align_up(off + tl.bytes, kTensorAlignment);
    layout.tensors.push_back(std::move(tl));
  }
  layout.total_bytes = off;
  if (Status st = validate_put_layout(layout, UINT64_MAX); !st) return st;
  return layout;
}

Result<std::vector<Status>> Client::put_batch(std::string_view ns, std::span<const PutItem> items,
                                              PutOptions options) {
  std::vector<Status> out(items.size());
  if (items.empty()) return out;
  std::vector<std::optional<BlockLayout>> layouts(items.size());
  bool device_memory = false;
  int first_device = -1;
  for (size_t i = 0; i < items.size(); ++i) {
    auto l = staged_layout(items[i].tensors);
    if (!l) {
      out[i] = l.status();
      continue;
    }
    layouts[i] = std::move(l).value();
    for (const TensorIn& t : items[i].tensors) {
      if (t.device < 0) continue;
      device_memory = true;
      if (first_device < 0) first_device = t.device;
    }
  }
  const int mine = options.device >= 0 ? options.device
                   : first_device >= 0 ? first_device
                                       : impl_->device;
  // kAuto stages device memory on the device when the daemon has a pool there; otherwise the
  // copies bring it to the host staging.
  const bool on_device = options.staging == PutStaging::kDevice ||
                         (options.staging == PutStaging::kAuto && device_memory &&
                          !impl_->daemon_devices.empty() && impl_->daemon_device(mine) >= 0);

  MutexLock lock(impl_->mu);
  int daemon_device = -1;
  if (on_device) {
    auto d = impl_->gpu_request_device(mine);
    if (!d) return d.status();
    daemon_device = *d;
    if (daemon_device < 0)
      return error(Errc::kInvalidArgument, "a device put needs a device: set PutOptions::device");
  } else if (mine >= 0) {
    daemon_device = impl_->daemon_device(mine);
  }

  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::PutItem>> witems;
  std::vector<size_t> sent;  // item index of each PutItem sent
  for (size_t i = 0; i < items.size(); ++i) {
    if (!layouts[i]) continue;
    auto wkey = wire_util::to_wire(items[i].key);
    witems.push_back(wire::CreatePutItem(fbb, &wkey, wire_util::to_wire(fbb, *layouts[i])));
    sent.push_back(i);
  }
  if (sent.empty()) return out;
  auto req = wire::CreatePutBatchReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                     fbb.CreateVector(witems), daemon_device, on_device ? 1 : 0);
  auto resp = impl_->call(fbb, wire::Request::PutBatchReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_PutBatchResp();
  if (body == nullptr || body->slots() == nullptr || body->slots()->size() != sent.size())
    return error(Errc::kProtocol, "bad put batch reply");

  std::vector<uint64_t> put_ids;  // of the slots reserved
  std::vector<size_t> reserved;   // their item indices
  std::vector<uint64_t> offsets;  // their staging offsets
  for (size_t s = 0; s < sent.size(); ++s) {
    const wire::PutSlot* slot = body->slots()->Get(s);
    if (slot->code() != 0) {
      out[sent[s]] = error(static_cast<Errc>(slot->code()), wire_util::str(slot->message()));
      continue;
    }
    put_ids.push_back(slot->put_id());
    reserved.push_back(sent[s]);
    offsets.push_back(slot->staging_offset());
  }
  // The device staging comes with the first reply that uses it, whatever its slots say: it
  // is mapped even when no item was reserved, or this connection would never get it again.
  Status staging_failure;
  if (const auto* info = body->device_staging(); info != nullptr) {
    gpu::PoolExport e;
    e.type = static_cast<gpu::HandleType>(info->handle_type());
    e.device = impl_->client_device(info->device());
    e.bytes = info->bytes();
    e.fd = (*resp)->take_fd();  // import_pool owns it from here on
    e.writable = true;
    if (e.type == gpu::HandleType::kCudaIpc) {
      if (info->ipc_handle() == nullptr || info->ipc_handle()->size() != e.ipc_handle.size()) {
        if (e.fd >= 0) ::close(e.fd);
        staging_failure = error(Errc::kProtocol, "device staging without its IPC handle");
      } else {
        std::memcpy(e.ipc_handle.data(), info->ipc_handle()->data(), e.ipc_handle.size());
      }
    }
    if (staging_failure.is_ok()) {
      auto imported = gpu::import_pool(e);
      if (imported)
        impl_->device_staging[daemon_device] = std::move(imported).value();
      else
        staging_failure = error(imported.status().code(),
                                "cannot map the device staging: " + imported.status().message());
    }
  }
  auto abort_all = [&](const Status& why) -> Result<std::vector<Status>> {
    impl_->mu.assert_held();  // put_batch()'s
    for (uint64_t id : put_ids) {
      flatbuffers::FlatBufferBuilder f;
      (void)impl_->call(f, wire::Request::AbortReq, wire::CreateAbortReq(f, id).Union());
    }
    return why;
  };
  if (put_ids.empty()) return out;

  // Where the staged bytes go in this process.
  std::byte* base = nullptr;
  uint64_t area = 0;
  if (on_device) {
    if (!staging_failure) return abort_all(staging_failure);
    auto it = impl_->device_staging.find(daemon_device);
    if (it == impl_->device_staging.end())
      return abort_all(error(Errc::kProtocol, "device put reply without its device staging"));
    base = reinterpret_cast<std::byte*>(it->second->base());
    area = it->second->size();
  } else {
    if (body->staging_fd_attached()) {
      if (Status st = impl_->map_staging((*resp)->take_fd(), body->staging_bytes()); !st)
        return abort_all(st);
    }
    base = impl_->staging;
    area = impl_->staging_bytes;
  }
  if (base == nullptr) return abort_all(error(Errc::kProtocol, "no staging area mapped"));

  // Every tensor of every reserved block, in one batch of copies.
  std::vector<gpu::CopyOp> ops;
  for (size_t r = 0; r < reserved.size(); ++r) {
    const BlockLayout& layout = *layouts[reserved[r]];
    if (offsets[r] > area || layout.total_bytes > area - offsets[r])
      return abort_all(error(Errc::kProtocol, "staging range outside the staging area"));
    std::byte* dst = base + offsets[r];
    const auto& tensors = items[reserved[r]].tensors;
    for (size_t t = 0; t < tensors.size(); ++t) {
      std::byte* at = dst + layout.tensors[t].offset;
      if (tensors[t].segments.empty()) {
        ops.push_back({at, tensors[t].data, layout.tensors[t].bytes});
        continue;
      }
      for (const Segment& s : tensors[t].segments) {
        ops.push_back({at, s.data, s.bytes});
        at += s.bytes;
      }
    }
  }
  // Device memory on either side takes CUDA's copies, unless the daemon emulates its devices
  // (whose "device memory" is host memory); host to host is a memcpy.
  const gpu::BackendKind kind = (on_device || device_memory) && impl_->gpu_backend != "emulation"
                                    ? gpu::BackendKind::kCuda
                                    : gpu::BackendKind::kEmulation;
  if (Status st = gpu::copy_batch(kind, ops); !st)
    return abort_all(error(st.code(), "copy into staging: " + st.message()));

  flatbuffers::FlatBufferBuilder sfbb;
  auto seal = impl_->call(sfbb, wire::Request::SealBatchReq,
                          wire::CreateSealBatchReq(sfbb, sfbb.CreateVector(put_ids)).Union());
  if (!seal) return seal.status();
  const auto* sealed = (*seal)->msg->body_as_SealBatchResp();
  if (sealed == nullptr || sealed->codes() == nullptr || sealed->codes()->size() != put_ids.size())
    return error(Errc::kProtocol, "bad seal batch reply");
  for (size_t r = 0; r < reserved.size(); ++r) {
    const auto code = static_cast<Errc>(sealed->codes()->Get(r));
    if (code == Errc::kOk) continue;
    std::string why;
    if (sealed->messages() != nullptr && r < sealed->messages()->size())
      why = wire_util::str(sealed->messages()->Get(r));
    out[reserved[r]] = error(code, why);
  }
  return out;
}

}  // namespace kvtier
