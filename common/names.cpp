#include "common/names.h"

#include <string>

namespace kvtier {

bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    size_t n;                            // continuation bytes
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the first continuation byte
    if (c >= 0xc2 && c <= 0xdf) {
      n = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
    } else {
      return false;  // a continuation byte, an overlong lead (c0, c1) or f5..ff
    }
    if (static_cast<size_t>(end - p) <= n) return false;
    if (p[1] < lo || p[1] > hi) return false;
    for (size_t i = 2; i <= n; ++i)
      if ((p[i] & 0xc0) != 0x80) return false;
    p += n + 1;
  }
  return true;
}

Status check_name(std::string_view field, std::string_view value, size_t max_bytes) {
  const std::string f(field);
  if (value.empty() || value.size() > max_bytes)
    return error(Errc::kInvalidArgument, f + " must be 1.." + std::to_string(max_bytes) + " bytes");
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      return error(Errc::kInvalidArgument, f + " contains a control character (NUL included)");
  }
  if (!valid_utf8(value)) return error(Errc::kInvalidArgument, f + " is not valid UTF-8");
  return {};
}

}  // namespace kvtier
