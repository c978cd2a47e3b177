// Golden encodings of odd-length tensors made by the real bitsandbytes (quantize_4bit, NF4,
// blocksize 64): kernels/tests/golden/bnb_nf4_odd.txt, written by make_bnb_goldens.py next to
// it.  kvtier's absmax section and packed codes must equal bitsandbytes' byte for byte,
// including the last byte's padding nibble (code 7) when the count is odd.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_internal.h"
#include "kernels/tests/nf4_test_util.h"

namespace kvtier::nf4 {
namespace {

using testing::Bytes;

struct Case {
  DType dtype = DType::kF16;
  uint64_t n = 0;
  Bytes src, absmax, codes;
};

Bytes from_hex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::byte>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<Case> load_cases() {
  std::ifstream in(KVTIER_SOURCE_DIR "/kernels/tests/golden/bnb_nf4_odd.txt");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string tag, a, b;
    words >> tag >> a >> b;
    if (tag == "case") {
      Case c;
      c.dtype = a == "f16" ? DType::kF16 : a == "bf16" ? DType::kBF16 : DType::kF32;
      c.n = std::stoull(b);
      cases.push_back(std::move(c));
    } else if (!cases.empty() && tag == "src") {
      cases.back().src = from_hex(a);
    } else if (!cases.empty() && tag == "absmax") {
      cases.back().absmax = from_hex(a);
    } else if (!cases.empty() && tag == "codes") {
      cases.back().codes = from_hex(a);
    }
  }
  return cases;
}

TEST_CASE("nf4 equals bitsandbytes on odd lengths, padding nibble included", "[nf4][golden]") {
  const std::vector<Case> cases = load_cases();
  REQUIRE(cases.size() == 27);
  std::vector<const char*> paths = {"scalar"};
  if (avx2::supported()) paths.push_back("avx2");
  if (avx512::supported()) paths.push_back("avx512");
  for (const Case& c : cases) {
    INFO(dtype_name(c.dtype) << " n=" << c.n);
    REQUIRE(c.src.size() == c.n * dtype_size(c.dtype));
    REQUIRE(c.codes.size() == (c.n + 1) / 2);
    const Params p{c.dtype, Nf4Layout::kRowBlocks, false, 1, c.n};
    const Header h = plan(p);
    auto check = [&](const Bytes& enc) {
      CHECK(Bytes(enc.begin() + h.scales_offset, enc.begin() + h.scales_offset + c.absmax.size()) ==
            c.absmax);
      CHECK(Bytes(enc.begin() + h.codes_offset, enc.end()) == c.codes);
    };
    Bytes ref(encoded_size(p));
    REQUIRE(reference::encode(p, c.src, ref).is_ok());
    check(ref);
    for (const char* path : paths) {
      INFO("path " << path);
      Bytes enc(encoded_size(p));
      REQUIRE(encode_with(path, p, c.src, enc).is_ok());
      check(enc);
    }
    if (c.n % 2 == 1) CHECK((std::to_integer<int>(c.codes.back()) & 15) == 7);
  }
}

}  // namespace
}  // namespace kvtier::nf4
