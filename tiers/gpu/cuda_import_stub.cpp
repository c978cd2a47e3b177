// import_cuda_pool in a build without CUDA: CUDA handles cannot be opened here.
#include <string>
#include <vector>

#include "tiers/gpu/cuda_import.h"
#include "tiers/gpu/device_copy.h"
#include "tiers/gpu/device_identity.h"

namespace kvtier::gpu {

Result<std::unique_ptr<ImportedPool>> import_cuda_pool(const PoolExport& e) {
  return error(Errc::kUnavailable, std::string("cannot import a gpu pool with handle type ") +
                                       handle_type_name(e.type) +
                                       ": kvtier was built without CUDA");
}

Status cuda_copy_batch(std::span<const CopyOp>) {
  return error(Errc::kUnavailable, "cannot copy device memory: kvtier was built without CUDA");
}

Result<void*> open_ipc_event(const std::array<std::byte, 64>&, int) {
  return error(Errc::kUnavailable, "cannot open a CUDA event: kvtier was built without CUDA");
}

Status wait_ipc_event(void*, void*) {
  return error(Errc::kUnavailable, "cannot wait for a CUDA event: kvtier was built without CUDA");
}

void close_ipc_event(void*) {}

Result<std::vector<DeviceUuid>> cuda_device_uuids() {
  return error(Errc::kUnavailable, "cannot list CUDA devices: kvtier was built without CUDA");
}

}  // namespace kvtier::gpu
