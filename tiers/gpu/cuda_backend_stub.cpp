// make_cuda_backend in a build without CUDA: the probe's answer is always the same.
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {

Result<std::unique_ptr<DeviceBackend>> make_cuda_backend() {
  return error(Errc::kUnavailable, "built without CUDA (no GPU tier; the emulation is available)");
}

}  // namespace kvtier::gpu
