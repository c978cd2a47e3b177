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
constexpr size_t kTensorAlignment = 64;  // stored raw tensors start on this boundary
// Stored NF4 tensors start on this boundary (the codec's sections are 16-byte aligned, as the
// CUDA kernels need); a smaller gap per tensor than kTensorAlignment (docs/nf4.md, capacity).
constexpr size_t kNf4TensorAlignment = 16;
inline uint64_t stored_alignment(Codec codec) {
  return codec == Codec::kNf4 ? kNf4TensorAlignment : kTensorAlignment;
}
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

// A stored block's layout as the tiers keep it: the tensors of a shape that many blocks share
// (tiers/layout_table.h; their checksum fields are 0) and the block's own checksums, one per
// tensor, kept beside it.  Or a view of a whole BlockLayout, checksums read from its tensors.
// It points into what it views: a lease's view is valid while the lease is held.
class LayoutView {
 public:
  LayoutView() = default;
  explicit LayoutView(const BlockLayout& whole) : shape_(&whole) {}
  LayoutView(const BlockLayout& shape, const uint64_t* checksums)
      : shape_(&shape), checksums_(checksums) {}

  explicit operator bool() const { return shape_ != nullptr; }
  // Every field but the checksum: a tier's shape has checksum 0 in each tensor (checksum(i)).
  const std::vector<TensorLayout>& tensors() const { return shape_->tensors; }
  uint64_t total_bytes() const { return shape_->total_bytes; }
  uint64_t checksum(size_t i) const {
    return checksums_ ? checksums_[i] : shape_->tensors[i].checksum;
  }
  bool has_fusion() const;
  // A whole copy, checksums filled in.
  BlockLayout to_layout() const;
  // Both views show the same stored block (not merely an equal layout).
  bool same_block(const LayoutView& o) const {
    return shape_ == o.shape_ && checksums_ == o.checksums_;
  }

 private:
  const BlockLayout* shape_ = nullptr;
  const uint64_t* checksums_ = nullptr;  // null: the shape's own checksums
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
