// Turning what a client staged into what a tier stores: the stored layout of a put (codec
// per tensor from the namespace rule, 64-byte aligned offsets) and the copy/encode itself.
#pragma once

#include <cstddef>

#include "common/layout.h"
#include "common/status.h"
#include "config/config.h"

namespace kvtier {

// Float tensors of an NF4 namespace are stored NF4 (blocks along the axis the client asked for
// in nf4_layout); everything else is stored as given.
BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule& rule);

// Copies or encodes every tensor from `staging` (laid out as `client`) into `dest` (laid out
// as `stored`) and fills the stored checksums.  Fails on input the codec refuses (NaN/Inf).
// Staging is client-writable memory: it is read once per tensor and checksummed after the copy.
Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest, bool double_quant);

}  // namespace kvtier
