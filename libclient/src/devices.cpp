// Device numbering between a client and kvtierd (docs/gpu.md, "Device identity"): each process
// numbers the GPUs it sees through its own CUDA_VISIBLE_DEVICES; the hello names the daemon's
// pool devices by UUID, and the client matches them with its own devices' UUIDs.
#include <string>

#include "libclient/src/impl.h"
#include "tiers/gpu/device_identity.h"

namespace kvtier {

const Client::Impl::DeviceMap& Client::Impl::device_map() {
  std::call_once(device_map_once, [this] {
    bool identity = daemon_devices.empty();
    for (const DaemonDevice& d : daemon_devices) identity = identity || !d.uuid;
    std::vector<gpu::DeviceUuid> local;
    if (!identity) {
      const gpu::BackendKind kind =
          gpu_backend == "cuda" ? gpu::BackendKind::kCuda : gpu::BackendKind::kEmulation;
      auto uuids = gpu::local_device_uuids(kind);
      // CUDA not usable here (no driver, a build without CUDA): the daemon's numbering is the
      // best guess, and importing a pool then fails with CUDA's own reason.
      if (uuids) local = std::move(uuids).value();
      identity = !uuids;
    }
    for (const DaemonDevice& d : daemon_devices) {
      int mine = -1;
      if (identity) {
        mine = d.index;
      } else {
        for (size_t i = 0; i < local.size(); ++i)
          if (local[i] == *d.uuid) mine = static_cast<int>(i);
      }
      if (mine < 0) continue;  // a device this process does not see
      device_map_.to_daemon[mine] = d.index;
      device_map_.to_client[d.index] = mine;
    }
  });
  return device_map_;
}

int Client::Impl::daemon_device(int client_device) {
  if (daemon_devices.empty()) return client_device;  // no GPU tier: the daemon says so
  const DeviceMap& m = device_map();
  if (client_device < 0) return m.to_daemon.empty() ? -2 : m.to_daemon.begin()->second;
  auto it = m.to_daemon.find(client_device);
  return it == m.to_daemon.end() ? -2 : it->second;
}

int Client::Impl::client_device(int daemon_device) {
  if (daemon_device < 0) return daemon_device;
  const DeviceMap& m = device_map();
  auto it = m.to_client.find(daemon_device);
  return it == m.to_client.end() ? -1 : it->second;
}

Result<int> Client::Impl::gpu_request_device(int client_device) {
  const int d = daemon_device(client_device);
  if (d != -2) return d;
  std::string have;
  for (const auto& [mine, theirs] : device_map().to_daemon)
    have += (have.empty() ? "" : ", ") + std::to_string(mine);
  std::string daemon;
  for (const DaemonDevice& dd : daemon_devices)
    daemon += (daemon.empty() ? "" : ", ") +
              (dd.uuid ? gpu::uuid_string(*dd.uuid) : std::to_string(dd.index));
  return error(
      Errc::kInvalidArgument,
      "no GPU tier on " +
          (client_device < 0 ? std::string("any device of this process")
                             : "device " + std::to_string(client_device) + " of this process") +
          " (this process's devices with a pool: " + (have.empty() ? "none" : have) +
          "; kvtierd's pools are on " + daemon +
          "; check CUDA_VISIBLE_DEVICES); ask for host memory instead");
}

std::vector<int> Client::gpu_devices() const {
  std::vector<int> out;
  for (const auto& [mine, theirs] : impl_->device_map().to_daemon) out.push_back(mine);
  return out;
}

}  // namespace kvtier
