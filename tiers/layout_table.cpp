#include "tiers/layout_table.h"

#include <functional>
#include <string_view>

namespace kvtier {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

// Every field but the checksums.
uint64_t shape_hash(const BlockLayout& l) {
  uint64_t h = mix(l.total_bytes, l.tensors.size());
  for (const TensorLayout& t : l.tensors) {
    h = mix(h, std::hash<std::string_view>{}(t.name));
    h = mix(h, (uint64_t(t.dtype) << 16) | (uint64_t(t.codec) << 8) | uint64_t(t.nf4_layout));
    for (uint64_t d : t.shape) h = mix(h, d);
    h = mix(h, t.shape.size());
    for (int64_t s : t.strides) h = mix(h, static_cast<uint64_t>(s));
    h = mix(h, t.strides.size());
    h = mix(h, t.offset);
    h = mix(h, t.bytes);
    h = mix(h, t.raw_bytes);
  }
  return h;
}

bool same_shape(const BlockLayout& a, const BlockLayout& b) {
  if (a.total_bytes != b.total_bytes || a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorLayout& x = a.tensors[i];
    const TensorLayout& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.strides != y.strides ||
        x.codec != y.codec || x.nf4_layout != y.nf4_layout || x.offset != y.offset ||
        x.bytes != y.bytes || x.raw_bytes != y.raw_bytes)
      return false;
  }
  return true;
}

}  // namespace

const BlockLayout& LayoutTable::acquire(const BlockLayout& layout) {
  const uint64_t h = shape_hash(layout);
  auto [first, last] = shapes_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    if (same_shape(*it->second, layout)) {
      ++it->second->holds;
      return *it->second;
    }
  }
  auto shape = std::make_unique<Shape>();
  static_cast<BlockLayout&>(*shape) = layout;
  for (TensorLayout& t : shape->tensors) t.checksum = 0;
  shape->hash = h;
  shape->holds = 1;
  return *shapes_.emplace(h, std::move(shape))->second;
}

void LayoutTable::release(const BlockLayout& shape) {
  // Every shape handed out is a Shape of this table.
  const uint64_t h = static_cast<const Shape&>(shape).hash;
  auto [first, last] = shapes_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    if (it->second.get() != &shape) continue;
    if (--it->second->holds == 0) shapes_.erase(it);
    return;
  }
}

uint64_t LayoutTable::heap_bytes() const {
  // A map node: next pointer, key, cached hash, value; a bucket pointer per shape.
  uint64_t n = shapes_.bucket_count() * sizeof(void*);
  for (const auto& [h, s] : shapes_) {
    n += 4 * sizeof(void*) + sizeof(Shape) + s->tensors.capacity() * sizeof(TensorLayout);
    for (const TensorLayout& t : s->tensors) {
      if (t.name.capacity() > 15) n += t.name.capacity() + 1;  // beyond the inline buffer
      n += t.shape.capacity() * sizeof(uint64_t) + t.strides.capacity() * sizeof(int64_t);
    }
  }
  return n;
}

}  // namespace kvtier
