// Client-side import of CUDA pool handles (kVmmFd, kCudaIpc), for import_pool().  Implemented
// in cuda_import.cpp, or by cuda_import_stub.cpp in a build without CUDA.
#pragma once

#include <memory>

#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {

// Maps a kVmmFd or kCudaIpc export into this process.  Does not close e.fd: the caller does,
// once this returns (the driver holds its own reference to an imported allocation).
Result<std::unique_ptr<ImportedPool>> import_cuda_pool(const PoolExport& e);

}  // namespace kvtier::gpu
