// The client's copies into a device staging area (docs/gpu.md, "Device puts"): many
// (destination, source, bytes) copies, each side device or host memory, done when the call
// returns.  Linked into libkvtier (kvtier_gpu_import).  Thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "kvtier/status.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {

struct CopyOp {
  void* dst = nullptr;
  const void* src = nullptr;
  uint64_t bytes = 0;
};

// For a daemon whose backend is `kind`: the emulation's "device memory" is host memory
// (memcpy); CUDA queues every copy with cudaMemcpyAsync(cudaMemcpyDefault: unified addressing
// tells device from host) on the calling thread's per-thread stream and synchronises once.
// The sources must be ready: a caller that computed them on another stream synchronises it
// first.
Status copy_batch(BackendKind kind, std::span<const CopyOp> ops);

// The CUDA half (cuda_import.cpp, or the stub without CUDA).
Status cuda_copy_batch(std::span<const CopyOp> ops);

}  // namespace kvtier::gpu
