// Helpers between the FlatBuffers schema (common/protocol.fbs) and kvtier's C++ types,
// shared by the daemon and libkvtier.  Every body is verified before use.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstring>
#include <span>
#include <type_traits>
#include <string>
#include <vector>

#include "kvtier/keys.h"
#include "common/layout.h"
#include "common/protocol_generated.h"
#include "kvtier/status.h"

namespace kvtier::wire_util {

inline wire::Key128 to_wire(const BlockKey& k) {
  return wire::Key128(k.lo, k.hi);
}
// The elements of a verified vector of scalars, copied bytewise.  The FlatBuffers verifier
// checks only that a vector's length field is 4-byte aligned, so 8-byte elements of a hostile
// message may sit misaligned: never read them in place (found by fuzz/fuzz_session.cpp).
template <typename T>
std::vector<T> scalars(const flatbuffers::Vector<T>* v) {
  static_assert(std::is_arithmetic_v<T> && FLATBUFFERS_LITTLEENDIAN);
  std::vector<T> out;
  if (v == nullptr || v->size() == 0) return out;
  out.resize(v->size());
  std::memcpy(out.data(), v->Data(), out.size() * sizeof(T));
  return out;
}

inline BlockKey from_wire(const wire::Key128& k) {
  return BlockKey{k.lo(), k.hi()};
}

flatbuffers::Offset<wire::BlockLayout> to_wire(flatbuffers::FlatBufferBuilder& fbb,
                                               const BlockLayout& layout);
// A tier's stored layout (shared shape + the block's checksums).
flatbuffers::Offset<wire::BlockLayout> to_wire(flatbuffers::FlatBufferBuilder& fbb,
                                               const LayoutView& layout);
BlockLayout from_wire(const wire::BlockLayout* layout);
std::vector<BlockKey> keys_from_wire(const flatbuffers::Vector<const wire::Key128*>* keys);
flatbuffers::Offset<flatbuffers::Vector<const wire::Key128*>> keys_to_wire(
    flatbuffers::FlatBufferBuilder& fbb, std::span<const BlockKey> keys);

// Verifies a body; nullptr when it is not a valid message of that type.
const wire::RequestMsg* verify_request(std::span<const std::byte> body);
const wire::ResponseMsg* verify_response(std::span<const std::byte> body);

inline std::span<const std::byte> bytes_of(const flatbuffers::FlatBufferBuilder& fbb) {
  return {reinterpret_cast<const std::byte*>(fbb.GetBufferPointer()), fbb.GetSize()};
}

inline std::string str(const flatbuffers::String* s) {
  return s ? s->str() : std::string();
}

}  // namespace kvtier::wire_util
