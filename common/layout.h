// The tensor layout header every block carries: tensors by name, dtype, shape, strides,
// codec and checksum.  Nothing else is needed to read a block (docs/protocol.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

constexpr size_t kMaxTensorsPerBlock = 64;
constexpr size_t kMaxTensorRank = 8;
constexpr size_t kMaxTensorNameBytes = 255;
constexpr size_t kTensorAlignment = 64;  // stored tensors start on this boundary
// Fusion state rides in its chunk's block as tensors named "fusion/<name>", plus its opaque
// metadata as the u8 tensor "fusion/.metadata".  Client tensor names may not use the prefix.
constexpr std::string_view kFusionPrefix = "fusion/";
constexpr std::string_view kFusionMetadata = "fusion/.metadata";
constexpr size_t kMaxFusionMetadataBytes = 64 * 1024;
inline bool is_fusion_tensor(std::string_view name) {
  return name.starts_with(kFusionPrefix);
}

struct TensorLayout {
  std::string name;
  DType dtype = DType::kF16;
  std::vector<uint64_t> shape;
  std::vector<int64_t> strides;  // elements; empty = contiguous row-major
  Codec codec = Codec::kRaw;
  Nf4Layout nf4_layout = Nf4Layout::kRowBlocks;
  uint64_t offset = 0;     // stored bytes start here, from the start of the block
  uint64_t bytes = 0;      // stored bytes
  uint64_t raw_bytes = 0;  // elements * dtype size
  uint64_t checksum = 0;   // XXH3-64 of the stored bytes

  uint64_t elements() const;
  // [rows, cols] view used by the NF4 codec: cols = innermost dim, rows = the rest.
  uint64_t rows() const;
  uint64_t cols() const;
};

struct BlockLayout {
  std::vector<TensorLayout> tensors;
  uint64_t total_bytes = 0;

  const TensorLayout* find(std::string_view name) const;
};

// Checks a layout a client sent with a put: 1..64 tensors with unique non-empty names, rank
// 1..8, no zero or overflowing dims, raw codec, contiguous, raw_bytes and bytes equal to the
// element count times the dtype size, and tensors inside [0, total_bytes) without overlap.
Status validate_put_layout(const BlockLayout& layout, uint64_t max_block_bytes);

// XXH3-64 of a byte range (the checksum in TensorLayout).
uint64_t checksum64(const void* data, size_t bytes);

inline uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace kvtier
