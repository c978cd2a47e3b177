// The interned layouts a tier's blocks share (tiers/layout_table.h) and the stored layout a
// BlockInfo gives back: shared shape + the block's own checksums.
#include <catch2/catch.hpp>

#include "tiers/layout_table.h"
#include "tiers/tier.h"

using namespace kvtier;

namespace {

TensorLayout tensor(const char* name, uint64_t rows, uint64_t offset, uint64_t checksum) {
  TensorLayout t;
  t.name = name;
  t.dtype = DType::kF16;
  t.shape = {rows, 64};
  t.offset = offset;
  t.bytes = t.raw_bytes = rows * 64 * 2;
  t.checksum = checksum;
  return t;
}

// `n` tensors of 16 x 64 fp16 named t0, t1, ..., checksums base + i.
BlockLayout layout(size_t n, uint64_t base = 100) {
  BlockLayout l;
  for (size_t i = 0; i < n; ++i) {
    const std::string name = "t" + std::to_string(i);
    l.tensors.push_back(tensor(name.c_str(), 16, i * 2048, base + i));
  }
  l.total_bytes = n * 2048;
  return l;
}

}  // namespace

TEST_CASE("blocks of one shape share one interned layout, whatever their checksums") {
  LayoutTable table;
  const BlockLayout& a = table.acquire(layout(2, 1));
  const BlockLayout& b = table.acquire(layout(2, 99));
  CHECK(&a == &b);
  CHECK(table.size() == 1);
  CHECK(a.tensors[0].checksum == 0);  // the shape keeps none
  CHECK(a.tensors[1].name == "t1");
  CHECK(a.total_bytes == 4096);
  table.release(a);
  CHECK(table.size() == 1);  // b still holds it
  table.release(b);
  CHECK(table.size() == 0);
}

TEST_CASE("any difference but the checksums is another shape") {
  LayoutTable table;
  const BlockLayout base = layout(2);
  std::vector<BlockLayout> variants(7, base);
  variants[0].tensors[1].name = "t9";
  variants[1].tensors[0].dtype = DType::kBF16;
  variants[2].tensors[0].shape = {8, 128};
  variants[3].tensors[1].offset = 2112;
  variants[4].tensors[0].codec = Codec::kNf4;
  variants[5].tensors[0].nf4_layout = Nf4Layout::kColumnBlocks;
  variants[6].total_bytes = 8192;
  const BlockLayout* shared = &table.acquire(base);
  for (const auto& v : variants) CHECK(&table.acquire(v) != shared);
  CHECK(table.size() == 8);
  CHECK(table.heap_bytes() > 8 * sizeof(BlockLayout));
}

TEST_CASE("a block's stored layout is its shape with its own checksums") {
  LayoutTable table;
  for (size_t n : {1, 2, 3, 40}) {  // inline up to two tensors, an array beyond
    const BlockLayout whole = layout(n, 7000 + n);
    BlockInfo info(NsKey{1, BlockKey{n, 2}}, Extent{0, 0, whole.total_bytes}, table.acquire(whole),
                   whole);
    const LayoutView v = info.layout();
    REQUIRE(v.tensors().size() == n);
    for (size_t i = 0; i < n; ++i) CHECK(v.checksum(i) == 7000 + n + i);
    const BlockLayout back = v.to_layout();
    REQUIRE(back.tensors.size() == n);
    for (size_t i = 0; i < n; ++i) {
      CHECK(back.tensors[i].checksum == whole.tensors[i].checksum);
      CHECK(back.tensors[i].name == whole.tensors[i].name);
      CHECK(back.tensors[i].shape == whole.tensors[i].shape);
    }
    CHECK(back.total_bytes == whole.total_bytes);
    CHECK(v.same_block(info.layout()));
    CHECK_FALSE(v.same_block(LayoutView(whole)));
    table.release(info.shape());
  }
  CHECK(table.size() == 0);
}

TEST_CASE("a view of a whole layout reads the tensors' own checksums") {
  BlockLayout l = layout(3, 50);
  l.tensors[2].name = "fusion/x";
  const LayoutView v(l);
  CHECK(v.checksum(2) == 52);
  CHECK(v.has_fusion());
  CHECK_FALSE(LayoutView(layout(1)).has_fusion());
}
