// The CUDA backend's pools (private to cuda_backend.cpp and cuda_pool.cpp).
//
// A pool is one allocation on one device: a VMM allocation (cuMemCreate with a POSIX fd
// handle, mapped into a reserved range, read-write for its device) or a cudaMalloc'd range
// for legacy IPC.  Its copies and kernels run on its own stream under its mutex and are
// synchronised before the call returns, which is the fence before a block is published.
//
// Compiled only with CUDA.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "common/mutex.h"
#include "tiers/gpu/cuda_api.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu::cuda {

// Host memory registered with register_host(): its address on each device.  Thread-safe.
class HostRegistry {
 public:
  struct Range {
    const std::byte* host = nullptr;
    uint64_t bytes = 0;
    std::vector<std::uintptr_t> device_address;  // by device index
  };
  void add(Range r);
  // The address on `device` of host [p, p + n), or 0 unless it lies in one registered range.
  std::uintptr_t device_address(int device, const void* p, uint64_t n) const;
  std::vector<Range> take_all();

 private:
  mutable Mutex mu_;
  std::vector<Range> ranges_ GUARDED_BY(mu_);
};

// One pool of at least `bytes` on `device` (rounded up to the allocation granularity).
Result<std::unique_ptr<DevicePool>> create_vmm_pool(const DriverApi& api,
                                                    std::shared_ptr<const HostRegistry> registry,
                                                    int device, uint64_t bytes);
Result<std::unique_ptr<DevicePool>> create_ipc_pool(std::shared_ptr<const HostRegistry> registry,
                                                    int device, uint64_t bytes);

}  // namespace kvtier::gpu::cuda
