#include "kvtier/keys.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstring>

namespace kvtier {
namespace {

void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

BlockKey from_xxh(XXH128_hash_t h) {
  return BlockKey{h.low64, h.high64};
}

}  // namespace

std::string BlockKey::hex() const {
  static const char* digits = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) out[15 - i] = digits[(hi >> (4 * i)) & 0xf];
  for (int i = 0; i < 16; ++i) out[31 - i] = digits[(lo >> (4 * i)) & 0xf];
  return out;
}

std::optional<BlockKey> BlockKey::from_hex(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  BlockKey k;
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    uint64_t& word = i < 16 ? k.hi : k.lo;
    word = (word << 4) | d;
  }
  return k;
}

BlockKey namespace_seed(std::string_view ns) {
  static constexpr char kTag[] = "kvtier.key.v1";  // includes its NUL: tag and ns stay apart
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, kTag, sizeof(kTag));
  XXH3_128bits_update(&st, ns.data(), ns.size());
  return from_xxh(XXH3_128bits_digest(&st));
}

BlockKey chain_next(const BlockKey& prev, std::span<const uint32_t> chunk) {
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  unsigned char head[16];
  put_u64(head, prev.lo);
  put_u64(head + 8, prev.hi);
  XXH3_128bits_update(&st, head, sizeof(head));
  unsigned char buf[256];
  size_t n = 0;
  for (uint32_t t : chunk) {
    for (int i = 0; i < 4; ++i) buf[n++] = static_cast<unsigned char>(t >> (8 * i));
    if (n == sizeof(buf)) {
      XXH3_128bits_update(&st, buf, n);
      n = 0;
    }
  }
  XXH3_128bits_update(&st, buf, n);
  return from_xxh(XXH3_128bits_digest(&st));
}

std::vector<BlockKey> chain_keys(std::string_view ns, std::span<const uint32_t> tokens,
                                 size_t chunk_tokens, bool include_partial) {
  std::vector<BlockKey> keys;
  if (chunk_tokens == 0) return keys;
  BlockKey prev = namespace_seed(ns);
  for (size_t off = 0; off < tokens.size(); off += chunk_tokens) {
    size_t n = std::min(chunk_tokens, tokens.size() - off);
    if (n < chunk_tokens && !include_partial) break;
    prev = chain_next(prev, tokens.subspan(off, n));
    keys.push_back(prev);
  }
  return keys;
}

}  // namespace kvtier
