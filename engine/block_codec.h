// Turning what a client staged into what a tier stores: the stored layout of a put (codec
// per tensor from the namespace rule, 64-byte aligned offsets) and the copy/encode itself.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

#include "common/layout.h"
#include "kvtier/status.h"
#include "config/config.h"
#include "engine/codec_counters.h"
#include "kernels/nf4.h"

namespace kvtier {

// How a namespace rule stores its NF4 tensors (docs/nf4.md).
struct Nf4Options {
  bool double_quant = true;
  uint32_t outlier_channels = 0;  // per key tensor; see is_key_tensor()
};
Nf4Options nf4_options(const config::NamespaceRule& rule);

// Key tensors, the ones outlier channels apply to: the last '/'-separated part of the name
// is "k" or starts with "k." (kvtier.hf "k", vLLM and legacy "k.{layer}", "g1/k").
bool is_key_tensor(std::string_view name);

// The codec parameters of tensor t (its dtype, shape and nf4_layout) under `opts`.
nf4::Params nf4_params(const TensorLayout& t, const Nf4Options& opts);

// Float tensors of an NF4 namespace are stored NF4 (blocks along the axis the client asked for
// in nf4_layout); everything else is stored as given.  Fusion tensors ("fusion/...", in the
// layout of a GPU block being copied down) follow the namespace's fusion_codec instead.
BlockLayout plan_stored_layout(const BlockLayout& client, const config::NamespaceRule& rule);

// Copies or encodes every tensor from `staging` (laid out as `client`) into `dest` (laid out
// as `stored`) and fills the stored checksums.  Fails on input the codec refuses (NaN/Inf).
// Staging is client-writable memory: it is read once per tensor and checksummed after the copy.
// `counters` (optional) counts the tensors, bytes and time, or the failure.
Status encode_block(const BlockLayout& client, const std::byte* staging, BlockLayout& stored,
                    std::byte* dest, const Nf4Options& opts, CodecCounters* counters = nullptr);

// The error of a block's NF4 tensors: each is decoded from `dest` (laid out as `stored`) and
// compared with its source in `staging` (laid out as `client`); tensors stored raw are left
// out.  For [metrics] nf4_error_sample, before the block is published (its extent is still the
// put's alone).  Staging is client-writable: a client that rewrites it meanwhile skews only
// its own namespace's figures.  kCorrupt if a tensor does not decode.
Result<Nf4Error> measure_nf4_error(const BlockLayout& client, const std::byte* staging,
                                   const BlockLayout& stored, const std::byte* dest);

// The layout of a chunk's block with new fusion state: the base block's non-fusion tensors as
// they are stored (codecs kept, offsets re-packed), then the client's fusion tensors renamed
// "fusion/<name>" and stored with the namespace's fusion_codec, then the metadata tensor.
BlockLayout plan_fusion_layout(const BlockLayout& base, const BlockLayout& fusion_client,
                               const config::NamespaceRule& rule, uint64_t metadata_bytes);

// Fills a block laid out by plan_fusion_layout: copies the base tensors from `base_bytes`
// (the old block in the arena, leased), encodes the fusion tensors from staging, writes the
// metadata, and fills the checksums.
Status encode_fusion_block(const BlockLayout& base, const std::byte* base_bytes,
                           const BlockLayout& fusion_client, const std::byte* staging,
                           std::span<const std::byte> metadata, const config::NamespaceRule& rule,
                           BlockLayout& stored, std::byte* dest, CodecCounters* counters = nullptr);

}  // namespace kvtier
