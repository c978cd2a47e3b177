// Block keys: a 128-bit chain hash over a namespace and the token ids of each chunk.
//
//   seed    = XXH3_128("kvtier.key.v1" 0x00 namespace)
//   key_1   = XXH3_128(seed.lo, seed.hi, tokens of chunk 1)
//   key_i   = XXH3_128(key_{i-1}.lo, key_{i-1}.hi, tokens of chunk i)
// where lo/hi are little-endian u64 and each token id a little-endian u32.  A key thus names
// a whole prefix, and the namespace (model, dtype/layout version, tenant salt) is part of
// every key.  Test vectors: docs/protocol.md and common/tests/keys_test.cpp.
// Part of the public API (installed).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvtier {

struct BlockKey {
  uint64_t lo = 0;
  uint64_t hi = 0;
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;

  // 32 lowercase hex digits, hi then lo (the XXH128 canonical big-endian form).
  std::string hex() const;
  static std::optional<BlockKey> from_hex(std::string_view hex);
};

struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const noexcept {
    return k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull);
  }
};

BlockKey namespace_seed(std::string_view ns);
BlockKey chain_next(const BlockKey& prev, std::span<const uint32_t> chunk_tokens);

// Keys of every complete chunk of `tokens` (a trailing partial chunk gets no key unless
// include_partial is set).  chunk_tokens must be > 0.
std::vector<BlockKey> chain_keys(std::string_view ns, std::span<const uint32_t> tokens,
                                 size_t chunk_tokens, bool include_partial = false);

}  // namespace kvtier
