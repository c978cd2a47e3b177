// Deterministic block contents for tests: every byte is a function of the key and its
// offset, so a reader can check a block without knowing who wrote it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/client.h"

namespace kvtier::testing {

inline uint8_t pattern_byte(const BlockKey& key, uint64_t i) {
  return static_cast<uint8_t>((key.lo * 131 + key.hi * 7 + i * 2654435761u) >> 7);
}

inline std::vector<uint8_t> pattern(const BlockKey& key, uint64_t bytes, uint64_t salt = 0) {
  std::vector<uint8_t> v(bytes);
  for (uint64_t i = 0; i < bytes; ++i) v[i] = pattern_byte(key, i + salt);
  return v;
}

// Two fp16 tensors "k" and "v" of [tokens, 128] each, filled with the pattern.
struct KvBlock {
  std::vector<uint8_t> k, v;
  std::vector<TensorIn> tensors;
  KvBlock(const BlockKey& key, uint64_t tokens) {
    k = pattern(key, tokens * 128 * 2, 0);
    v = pattern(key, tokens * 128 * 2, 1u << 30);
    tensors = {TensorIn{"k", DType::kF16, {tokens, 128}, k.data()},
               TensorIn{"v", DType::kF16, {tokens, 128}, v.data()}};
  }
};

// True when the leased block holds exactly what KvBlock(key, tokens) wrote.
inline bool check_kv_block(const LeasedBlock& b, uint64_t tokens) {
  if (!b.found()) return false;
  const TensorView* k = b.tensor("k");
  const TensorView* v = b.tensor("v");
  if (!k || !v || k->bytes != tokens * 256 || v->bytes != tokens * 256) return false;
  if (k->shape != std::vector<uint64_t>{tokens, 128}) return false;
  for (uint64_t i = 0; i < k->bytes; ++i) {
    if (std::to_integer<uint8_t>(k->data[i]) != pattern_byte(b.key, i)) return false;
    if (std::to_integer<uint8_t>(v->data[i]) != pattern_byte(b.key, i + (1u << 30))) return false;
  }
  return k->verify() && v->verify();
}

}  // namespace kvtier::testing
