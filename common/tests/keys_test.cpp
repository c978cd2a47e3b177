// Key test vectors.  The expected values were computed independently of this code, with
// xxhsum -H2 (Debian's xxhash CLI) over the byte strings that docs/protocol.md defines.
#include <catch2/catch.hpp>

#include <numeric>

#include "kvtier/keys.h"

using kvtier::BlockKey;

TEST_CASE("namespace seed matches xxhsum -H2 of the tagged namespace") {
  CHECK(kvtier::namespace_seed("llama3-8b/fp16/v1").hex() == "9f8d4fdd60e10b317787a27e1a0f730f");
  CHECK(kvtier::namespace_seed("").hex() == "ba2bd1e3bcd168bcffa206c482d47eb2");
}

TEST_CASE("chain keys match the documented test vectors") {
  std::vector<uint32_t> tokens(32);
  std::iota(tokens.begin(), tokens.end(), 1u);
  auto keys = kvtier::chain_keys("llama3-8b/fp16/v1", tokens, 16);
  REQUIRE(keys.size() == 2);
  CHECK(keys[0].hex() == "bca1db0dfba949d95fc8a517dfd45a12");
  CHECK(keys[1].hex() == "361319e7cebffea83b5f4e0e161b99a6");

  std::vector<uint32_t> odd = {0xffffffffu, 0, 7};
  auto k = kvtier::chain_keys("", odd, 16, /*include_partial=*/true);
  REQUIRE(k.size() == 1);
  CHECK(k[0].hex() == "5a969ff48c1f8888956455a0b07c5f70");
  CHECK(kvtier::chain_keys("", odd, 16).empty());
}

TEST_CASE("a key names the whole prefix and the namespace") {
  std::vector<uint32_t> a = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint32_t> b = {9, 2, 3, 4, 5, 6, 7, 8};
  auto ka = kvtier::chain_keys("ns", a, 4);
  auto kb = kvtier::chain_keys("ns", b, 4);
  CHECK(ka[0] != kb[0]);
  CHECK(ka[1] != kb[1]);  // same second chunk, different prefix
  CHECK(kvtier::chain_keys("other", a, 4)[0] != ka[0]);
  CHECK(kvtier::chain_keys("ns", a, 4, false) == kvtier::chain_keys("ns", a, 4, true));
}

TEST_CASE("hex round trip and rejects") {
  BlockKey k{0x0123456789abcdefull, 0xfedcba9876543210ull};
  CHECK(k.hex() == "fedcba98765432100123456789abcdef");
  CHECK(BlockKey::from_hex(k.hex()) == k);
  CHECK(BlockKey::from_hex("FEDCBA98765432100123456789ABCDEF") == k);
  CHECK_FALSE(BlockKey::from_hex("xyz").has_value());
  CHECK_FALSE(BlockKey::from_hex("fedcba98765432100123456789abcdeg").has_value());
}
