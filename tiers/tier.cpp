#include "tiers/tier.h"

#include <algorithm>

namespace kvtier {

// docs/internals.md, "Memory per block", accounts for these bytes field by field (LP64).
static_assert(sizeof(void*) != 8 || sizeof(BlockInfo) == 104, "BlockInfo grew: update the docs");

BlockInfo::BlockInfo(const NsKey& block_id, const Extent& block_extent, const BlockLayout& shape,
                     const BlockLayout& layout)
    : id(block_id),
      extent(block_extent),
      checksum_count_(static_cast<uint16_t>(layout.tensors.size())),
      shape_(&shape) {
  // Layouts have at most a few hundred tensors (kMaxTensorsPerBlock, plus fusion state).
  uint64_t* out = inline_checksums_;
  if (checksum_count_ > kInlineChecksums) {
    heap_checksums_ = new uint64_t[checksum_count_];
    out = heap_checksums_;
  } else {
    std::fill_n(inline_checksums_, kInlineChecksums, 0);
  }
  for (size_t i = 0; i < checksum_count_; ++i) out[i] = layout.tensors[i].checksum;
}

BlockInfo::~BlockInfo() {
  if (checksum_count_ > kInlineChecksums) delete[] heap_checksums_;
}

}  // namespace kvtier
