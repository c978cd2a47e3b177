// nf4_capacity: the host-arena bytes one KV block costs, per fp16 byte, by NF4 setting
// (docs/nf4.md, "Capacity"; issue 18).
//
// A block is the keys and values of `tokens` tokens of every layer, laid out as the Python
// clients put them:
//   hf    kvtier.hf: "k", "v" [layers, kv_heads, tokens, head_dim] (two tensors; keys per channel)
//   vllm  kvtier.vllm: "k.{i}", "v.{i}" [tokens, kv_heads * head_dim] per layer (keys per channel)
// for two head geometries (Llama-3-8B: 32 layers, 8 KV heads of 128; SmolLM2-135M: 30 layers,
// 3 KV heads of 64).  Bytes are what the engine's stored layout (engine/block_codec.cpp) asks
// of the host arena, rounded up to the arena's alignment, against the block's fp16 bytes.
// Columns:
//   v1        format v1, fp32 absmax (the old default): 64 B header, tensors at 64 B, arena 256 B
//   v1+dq     format v1 with its int8 double quant, same alignment
//   v2        format v2 without double quant: 32 B header, NF4 tensors at 16 B, arena 64 B
//   v2+dq     format v2 with 7-bit double quant: the default namespace
//   +out4     v2+dq keeping 4 outlier key channels in fp16 (nf4_outlier_channels = 4; the
//             bound the arena reserves)
//
//   nf4_capacity [--quick] [--check]   --check: exit 1 unless the default stores a 2 MiB hf
//                                      block >= 3.88x smaller than fp16
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "config/config.h"
#include "engine/block_codec.h"
#include "kernels/nf4.h"
#include "tiers/host/shm_arena.h"

using namespace kvtier;

namespace {

struct Geometry {
  const char* name;
  uint64_t layers, heads, head_dim;
};

TensorLayout f16(std::string name, std::vector<uint64_t> shape, Nf4Layout layout) {
  TensorLayout t;
  t.name = std::move(name);
  t.dtype = DType::kF16;
  t.shape = std::move(shape);
  t.nf4_layout = layout;
  t.bytes = t.raw_bytes = t.elements() * 2;
  return t;
}

BlockLayout block(const Geometry& g, bool hf, uint64_t tokens) {
  BlockLayout b;
  if (hf) {
    for (const char* n : {"k", "v"}) {
      b.tensors.push_back(f16(n, {g.layers, g.heads, tokens, g.head_dim},
                              n[0] == 'k' ? Nf4Layout::kColumnBlocks : Nf4Layout::kRowBlocks));
    }
  } else {
    for (uint64_t i = 0; i < g.layers; ++i) {
      b.tensors.push_back(
          f16("k." + std::to_string(i), {tokens, g.heads * g.head_dim}, Nf4Layout::kColumnBlocks));
      b.tensors.push_back(
          f16("v." + std::to_string(i), {tokens, g.heads * g.head_dim}, Nf4Layout::kRowBlocks));
    }
  }
  uint64_t off = 0;
  for (auto& t : b.tensors) {
    t.offset = off;
    off = align_up(off + t.bytes, kTensorAlignment);
  }
  b.total_bytes = off;
  return b;
}

uint64_t fp16_bytes(const BlockLayout& b) {
  uint64_t n = 0;
  for (const auto& t : b.tensors) n += t.raw_bytes;
  return n;
}

// The old rules: format v1, tensors at 64 B, the host arena at 256 B.
uint64_t stored_v1(const BlockLayout& b, bool dq) {
  uint64_t off = 0;
  for (const auto& t : b.tensors) {
    nf4::Params p{t.dtype, t.nf4_layout, dq, t.rows(), t.cols()};
    p.version = nf4::kVersion1;
    off = align_up(off + nf4::encoded_size(p), 64);
  }
  return align_up(off, 256);
}

uint64_t stored_now(const BlockLayout& b, const config::NamespaceRule& rule) {
  return align_up(plan_stored_layout(b, rule).total_bytes, ShmArena::kAlignment);
}

}  // namespace

int main(int argc, char** argv) {
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--check") == 0) check = true;
    // --quick: the same figures (they are computed, not timed); accepted for CTest.
  }
  const Geometry geometries[] = {{"llama3-8b", 32, 8, 128}, {"smollm2-135m", 30, 3, 64}};
  config::NamespaceRule nodq, dq, out4;
  nodq.nf4_double_quant = false;
  out4.nf4_outlier_channels = 4;
  std::printf("NF4 host-arena bytes per fp16 byte (ratio = fp16 / stored)\n");
  std::printf("%-13s %-5s %6s %10s | %16s %16s %16s %16s %16s\n", "geometry", "put", "tokens",
              "fp16 B", "v1 (old default)", "v1+dq", "v2", "v2+dq (default)", "v2+dq+out4");
  double hf_2mib_ratio = 0;
  for (const Geometry& g : geometries) {
    for (bool hf : {true, false}) {
      for (uint64_t tokens : {16, 64, 256}) {
        BlockLayout b = block(g, hf, tokens);
        const double fp16 = static_cast<double>(fp16_bytes(b));
        const uint64_t sizes[] = {stored_v1(b, false), stored_v1(b, true), stored_now(b, nodq),
                                  stored_now(b, dq), stored_now(b, out4)};
        std::printf("%-13s %-5s %6llu %10.0f |", g.name, hf ? "hf" : "vllm",
                    static_cast<unsigned long long>(tokens), fp16);
        for (uint64_t s : sizes) {
          std::printf("   %.4f %6.3fx", static_cast<double>(s) / fp16,
                      fp16 / static_cast<double>(s));
        }
        std::printf("\n");
        if (hf && fp16 == 2.0 * 1024 * 1024) hf_2mib_ratio = fp16 / static_cast<double>(sizes[3]);
      }
    }
  }
  std::printf("default (v2+dq) for a 2 MiB k+v block (llama3-8b, hf, 16 tokens): %.3fx\n",
              hf_2mib_ratio);
  if (check && !(hf_2mib_ratio >= 3.88)) {
    std::printf("FAIL: below 3.88x\n");
    return 1;
  }
  return 0;
}
