// Helpers shared by the tiers' unit tests (host and GPU).
#pragma once

#include <cstdint>

#include "common/layout.h"
#include "tiers/tier.h"

namespace kvtier::testing {

// A one-tensor block layout of `bytes` (elements of `dtype`).
inline BlockLayout layout_of(uint64_t bytes, DType dtype = DType::kU8) {
  BlockLayout l;
  TensorLayout t;
  t.name = "kv";
  t.dtype = dtype;
  t.shape = {bytes / dtype_size(dtype)};
  t.bytes = t.raw_bytes = bytes;
  l.tensors.push_back(t);
  l.total_bytes = bytes;
  return l;
}

inline NsKey key(uint64_t i) {
  return NsKey{1, BlockKey{i, 42}};
}

}  // namespace kvtier::testing
