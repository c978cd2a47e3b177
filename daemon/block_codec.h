// Turning what a client staged into what a tier stores: the stored layout of a put (codec
// per tensor from the namespace rule, 64-byte aligned offsets) and the copy/encode itself.
#pragma once

#include <cstddef>

#include "common/layout.h"
#include "common/status.h"
#include "config/config.h"

namespace kvtier {

BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule& rule);

// Copies or encodes every tensor from `staging` (laid out as `client`) into `dest` (laid out
// as `stored`) and fills the stored checksums.  Fails on input the codec refuses (NaN/Inf).
Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest);

}  // namespace kvtier
