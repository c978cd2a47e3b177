#include "common/layout.h"

#include "common/names.h"

#include <algorithm>
#include <set>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtier {

uint64_t TensorLayout::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t TensorLayout::cols() const {
  return shape.empty() ? 1 : shape.back();
}

uint64_t TensorLayout::rows() const {
  uint64_t c = cols();
  return c == 0 ? 0 : elements() / c;
}

const TensorLayout* BlockLayout::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

bool LayoutView::has_fusion() const {
  for (const auto& t : shape_->tensors)
    if (is_fusion_tensor(t.name)) return true;
  return false;
}

BlockLayout LayoutView::to_layout() const {
  BlockLayout out = *shape_;
  for (size_t i = 0; i < out.tensors.size(); ++i) out.tensors[i].checksum = checksum(i);
  return out;
}

uint64_t checksum64(const void* data, size_t bytes) {
  return XXH3_64bits(data, bytes);
}

Status validate_put_layout(const BlockLayout& l, uint64_t max_block_bytes) {
  auto bad = [](std::string m) { return error(Errc::kInvalidArgument, std::move(m)); };
  if (l.tensors.empty()) return bad("a block needs at least one tensor");
  if (l.tensors.size() > kMaxTensorsPerBlock)
    return bad("too many tensors: " + std::to_string(l.tensors.size()) + " (limit " +
               std::to_string(kMaxTensorsPerBlock) + ")");
  if (l.total_bytes == 0 || l.total_bytes > max_block_bytes)
    return bad("block of " + std::to_string(l.total_bytes) + " bytes outside 1.." +
               std::to_string(max_block_bytes));
  std::set<std::string_view> names;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& t : l.tensors) {
    if (Status st = check_name("tensor name", t.name, kMaxTensorNameBytes); !st) return st;
    const std::string who = "tensor '" + t.name + "': ";
    if (!names.insert(t.name).second) return bad(who + "duplicate name");
    if (is_fusion_tensor(t.name)) return bad(who + "the prefix 'fusion/' is reserved");
    if (dtype_size(t.dtype) == 0) return bad(who + "unknown dtype");
    if (t.shape.empty() || t.shape.size() > kMaxTensorRank)
      return bad(who + "rank must be 1..8, got " + std::to_string(t.shape.size()));
    uint64_t n = 1;
    for (uint64_t d : t.shape) {
      if (d == 0) return bad(who + "zero-sized dimension");
      if (n > max_block_bytes / d) return bad(who + "shape too large");
      n *= d;
    }
    if (!t.strides.empty()) return bad(who + "put tensors must be contiguous (empty strides)");
    if (t.codec != Codec::kRaw) return bad(who + "put tensors must be raw");
    if (t.nf4_layout != Nf4Layout::kRowBlocks && t.nf4_layout != Nf4Layout::kColumnBlocks)
      return bad(who + "unknown nf4 layout");
    uint64_t raw = n * dtype_size(t.dtype);
    if (t.raw_bytes != raw || t.bytes != raw)
      return bad(who + "byte count " + std::to_string(t.bytes) +
                 " does not match shape and dtype (" + std::to_string(raw) + ")");
    if (t.offset > l.total_bytes || t.bytes > l.total_bytes - t.offset)
      return bad(who + "extends past the end of the block");
    ranges.emplace_back(t.offset, t.offset + t.bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) return bad("tensors overlap");
  return {};
}

}  // namespace kvtier
