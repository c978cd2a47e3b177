#include "tiers/gpu/device_copy.h"

#include <cstring>

namespace kvtier::gpu {

Status copy_batch(BackendKind kind, std::span<const CopyOp> ops) {
  if (kind == BackendKind::kCuda) return cuda_copy_batch(ops);
  for (const CopyOp& op : ops)
    if (op.bytes > 0) std::memcpy(op.dst, op.src, op.bytes);
  return Status::ok();
}

}  // namespace kvtier::gpu
