// Names a peer sends — namespaces, tensor names, modality names — are checked where they
// enter the daemon: valid UTF-8 (they reach JSON documents, logs and file formats), no NUL or
// other C0 control character, and within a length limit.  The error names the field and
// never echoes the offending bytes.
#pragma once

#include <cstddef>
#include <string_view>

#include "kvtier/status.h"

namespace kvtier {

constexpr size_t kMaxNamespaceBytes = 1024;
constexpr size_t kMaxModalityBytes = 255;

// Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view s);

// kInvalidArgument naming `field` unless `value` is 1..max_bytes bytes of valid UTF-8 without
// control characters (U+0000..U+001F, U+007F).
Status check_name(std::string_view field, std::string_view value, size_t max_bytes);

}  // namespace kvtier
