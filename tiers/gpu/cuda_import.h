// Client-side import of CUDA pool handles (kVmmFd, kCudaIpc), for import_pool().  Implemented
// in cuda_import.cpp, or by cuda_import_stub.cpp in a build without CUDA.
#pragma once

#include <array>
#include <memory>

#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {

// Maps a kVmmFd or kCudaIpc export into this process.  Does not close e.fd: the caller does,
// once this returns (the driver holds its own reference to an imported allocation).
Result<std::unique_ptr<ImportedPool>> import_cuda_pool(const PoolExport& e);

// A pool's ready event (PoolExport::events) opened in this process (cudaIpcOpenEventHandle,
// with `device` current); kUnavailable without CUDA.  Close it with close_ipc_event().
Result<void*> open_ipc_event(const std::array<std::byte, 64>& handle, int device);
// Makes `stream` (a cudaStream_t; nullptr: this thread, which blocks) wait for the event's
// last recorded work.
Status wait_ipc_event(void* event, void* stream);
void close_ipc_event(void* event);

}  // namespace kvtier::gpu
