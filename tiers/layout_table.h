// The layouts a tier's blocks share.  A block's stored layout splits in two: its shape (every
// tensor's name, dtype, shape, strides, codec, offset and sizes) and its checksums.  Blocks of
// one namespace and model nearly always have one shape, so the tier keeps each distinct shape
// once, here, and a block keeps a pointer to it and its own checksums (BlockInfo).
//
// Refcounted: a shape lives while any block holds it, a doomed (removed, still leased) block
// included, so a lease's LayoutView stays valid until it is released.
//
// Not thread-safe: the owning tier's caller serialises calls (tiers/tier.h).  A shape never
// changes once interned; only its count does, under that same serialisation, so a leased
// block's shape may be read without it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>

#include "common/layout.h"

namespace kvtier {

class LayoutTable {
 public:
  LayoutTable() = default;
  LayoutTable(const LayoutTable&) = delete;
  LayoutTable& operator=(const LayoutTable&) = delete;

  // The interned shape of `layout` (its checksums ignored; the shape's are 0), held once more.
  const BlockLayout& acquire(const BlockLayout& layout);
  // Drops one hold of a shape acquire() returned; the last one frees it.
  void release(const BlockLayout& shape);

  size_t size() const { return shapes_.size(); }  // distinct shapes held
  // Heap the table holds: each shape with its tensors, names, dims and map node, estimated
  // from the sizes it allocated (malloc's own rounding not counted).
  uint64_t heap_bytes() const;

 private:
  struct Shape : BlockLayout {
    uint64_t hash = 0;
    uint64_t holds = 0;
  };
  // By hash of the shape; equal hashes are told apart by comparing the shapes.
  std::unordered_multimap<uint64_t, std::unique_ptr<Shape>> shapes_;
};

}  // namespace kvtier
