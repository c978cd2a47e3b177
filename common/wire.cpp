#include "common/wire.h"

namespace kvtier::wire_util {

flatbuffers::Offset<wire::BlockLayout> to_wire(flatbuffers::FlatBufferBuilder& fbb,
                                               const LayoutView& layout) {
  std::vector<flatbuffers::Offset<wire::TensorDesc>> tensors;
  tensors.reserve(layout.tensors().size());
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const TensorLayout& t = layout.tensors()[i];
    tensors.push_back(wire::CreateTensorDesc(
        fbb, fbb.CreateString(t.name), static_cast<uint8_t>(t.dtype), fbb.CreateVector(t.shape),
        t.strides.empty() ? 0 : fbb.CreateVector(t.strides), static_cast<uint8_t>(t.codec),
        static_cast<uint8_t>(t.nf4_layout), t.offset, t.bytes, t.raw_bytes, layout.checksum(i)));
  }
  return wire::CreateBlockLayout(fbb, fbb.CreateVector(tensors), layout.total_bytes());
}

flatbuffers::Offset<wire::BlockLayout> to_wire(flatbuffers::FlatBufferBuilder& fbb,
                                               const BlockLayout& layout) {
  return to_wire(fbb, LayoutView(layout));
}

BlockLayout from_wire(const wire::BlockLayout* l) {
  BlockLayout out;
  if (l == nullptr) return out;
  out.total_bytes = l->total_bytes();
  if (l->tensors() == nullptr) return out;
  out.tensors.reserve(l->tensors()->size());
  for (const auto* t : *l->tensors()) {
    TensorLayout tl;
    tl.name = str(t->name());
    tl.dtype = static_cast<DType>(t->dtype());
    tl.shape = scalars(t->shape());
    tl.strides = scalars(t->strides());
    tl.codec = static_cast<Codec>(t->codec());
    tl.nf4_layout = static_cast<Nf4Layout>(t->nf4_layout());
    tl.offset = t->offset();
    tl.bytes = t->bytes();
    tl.raw_bytes = t->raw_bytes();
    tl.checksum = t->checksum();
    out.tensors.push_back(std::move(tl));
  }
  return out;
}

std::vector<BlockKey> keys_from_wire(const flatbuffers::Vector<const wire::Key128*>* keys) {
  std::vector<BlockKey> out;
  if (keys == nullptr) return out;
  out.reserve(keys->size());
  // Copied out bytewise, as scalars() does: a struct vector may sit misaligned.
  const uint8_t* p = keys->Data();
  for (size_t i = 0; i < keys->size(); ++i) {
    wire::Key128 k;
    std::memcpy(&k, p + i * sizeof k, sizeof k);
    out.push_back(from_wire(k));
  }
  return out;
}

flatbuffers::Offset<flatbuffers::Vector<const wire::Key128*>> keys_to_wire(
    flatbuffers::FlatBufferBuilder& fbb, std::span<const BlockKey> keys) {
  std::vector<wire::Key128> v;
  v.reserve(keys.size());
  for (const auto& k : keys) v.push_back(to_wire(k));
  return fbb.CreateVectorOfStructs(v);
}

namespace {
// Bounds on nesting and table count keep a hostile message from costing more than its size.
constexpr uint32_t kMaxDepth = 16;
constexpr uint32_t kMaxTables = 1u << 20;
}  // namespace

const wire::RequestMsg* verify_request(std::span<const std::byte> body) {
  auto* p = reinterpret_cast<const uint8_t*>(body.data());
  flatbuffers::Verifier v(p, body.size(), kMaxDepth, kMaxTables);
  if (!v.VerifyBuffer<wire::RequestMsg>(nullptr)) return nullptr;
  return flatbuffers::GetRoot<wire::RequestMsg>(p);
}

const wire::ResponseMsg* verify_response(std::span<const std::byte> body) {
  auto* p = reinterpret_cast<const uint8_t*>(body.data());
  flatbuffers::Verifier v(p, body.size(), kMaxDepth, kMaxTables);
  if (!v.VerifyBuffer<wire::ResponseMsg>(nullptr)) return nullptr;
  return flatbuffers::GetRoot<wire::ResponseMsg>(p);
}

}  // namespace kvtier::wire_util
