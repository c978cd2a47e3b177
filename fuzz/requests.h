// Request frames for the session and channel harnesses and for the seed generator
// (fuzz/seeds.cpp): every request type of common/protocol.fbs, built with the generated
// builders, with complete bodies, bodies with fields left out, and a union type set with no
// body table at all.  Header-only: the harnesses and seeds.cpp include it.
//
// Gen draws everything from a small deterministic generator, so one 64-bit seed names one
// request; values come from small sets (a few namespaces, keys 1..8, plausible layouts) most
// of the time, so that requests meet each other's state (a seal finds its put, a get finds a
// sealed key), and from the whole range now and then.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/layout.h"
#include "common/protocol_generated.h"

namespace kvtier::fuzz {

using Bytes = std::vector<uint8_t>;

// A frame: the 16-byte header (common/frame.h) and `body`.
inline Bytes frame_of(std::span<const uint8_t> body, FrameKind kind = FrameKind::kRequest) {
  const auto h = encode_header({kProtocolVersion, kind, static_cast<uint32_t>(body.size())});
  Bytes out(reinterpret_cast<const uint8_t*>(h.data()),
            reinterpret_cast<const uint8_t*>(h.data()) + h.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

inline Bytes body_of(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<wire::RequestMsg> m) {
  fbb.Finish(m);
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

// A RequestMsg whose union type is `type` and whose body table is absent (valid FlatBuffers).
inline Bytes no_body(uint64_t id, wire::Request type) {
  flatbuffers::FlatBufferBuilder fbb;
  return body_of(fbb, wire::CreateRequestMsg(fbb, id, type, 0));
}

// splitmix64: small, fast, and the same on every platform.
class Gen {
 public:
  explicit Gen(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  bool chance(unsigned percent) { return below(100) < percent; }

  // Field presence: most bodies are complete, some leave a field out.
  bool present() { return chance(88); }

  std::string ns() {
    static const char* const kNames[] = {
        "ns",       "",    "fp16/a", "dq/b", "iso/c", "persist/d", "ns/with/a/longer/name",
        "\xff\xfe", "ns\n"};
    if (chance(5)) return std::string(below(1100), 'n');
    return kNames[below(std::size(kNames))];
  }
  wire::Key128 key() {
    if (chance(10)) return wire::Key128(next(), next());
    return wire::Key128(1 + below(8), 0);
  }
  std::vector<wire::Key128> keys() {
    std::vector<wire::Key128> k(chance(3) ? below(300) : below(5));
    for (auto& x : k) x = key();
    return k;
  }
  uint64_t id() { return chance(80) ? 1 + below(4) : next(); }

  flatbuffers::Offset<wire::BlockLayout> layout(flatbuffers::FlatBufferBuilder& fbb,
                                                bool fusion = false) {
    static const char* const kTensors[] = {"k", "v", "x", "fusion/x", "", "k"};
    const size_t n = chance(3) ? below(70) : 1 + below(3);
    std::vector<flatbuffers::Offset<wire::TensorDesc>> ts;
    uint64_t off = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto dtype = static_cast<uint8_t>(chance(90) ? 1 + below(3) : below(8));
      std::vector<uint64_t> shape;
      const size_t rank = chance(5) ? below(10) : 1 + below(3);
      uint64_t elems = 1;
      for (size_t d = 0; d < rank; ++d) {
        static const uint64_t kDims[] = {1, 2, 3, 16, 63, 64, 65, 128};
        shape.push_back(chance(3) ? next() : kDims[below(std::size(kDims))]);
        elems *= shape.back();
      }
      const uint64_t raw = elems * dtype_size(static_cast<DType>(dtype));
      const uint64_t bytes = chance(90) ? raw : below(1 << 16);
      std::string name =
          fusion && chance(50) ? "f" + std::to_string(i) : kTensors[below(i ? 6 : 3)];
      if (i > 0 && chance(70)) name += std::to_string(i);
      std::vector<int64_t> strides;
      if (chance(5)) strides.assign(rank, static_cast<int64_t>(below(3)) - 1);
      ts.push_back(wire::CreateTensorDesc(
          fbb, present() ? fbb.CreateString(name) : 0, dtype,
          present() ? fbb.CreateVector(shape) : 0, strides.empty() ? 0 : fbb.CreateVector(strides),
          static_cast<uint8_t>(chance(90) ? 0 : below(3)),
          static_cast<uint8_t>(chance(50) ? 1 : below(3)), chance(90) ? off : below(1 << 20), bytes,
          chance(90) ? raw : next(), chance(95) ? 0 : next()));
      off = align_up(off + bytes, 64);
    }
    return wire::CreateBlockLayout(fbb, present() ? fbb.CreateVector(ts) : 0,
                                   chance(90) ? off : below(1 << 21));
  }

  flatbuffers::Offset<flatbuffers::Vector<float>> floats(flatbuffers::FlatBufferBuilder& fbb) {
    static const size_t kDims[] = {4, 8, 3, 0, 16};
    std::vector<float> v(chance(3) ? below(600) : kDims[below(std::size(kDims))]);
    for (auto& x : v) {
      x = static_cast<float>(static_cast<int64_t>(below(2001)) - 1000) / 1000.f;
      if (chance(2)) {
        const uint32_t bits = static_cast<uint32_t>(next());
        std::memcpy(&x, &bits, 4);  // NaN, Inf, denormals
      }
    }
    return fbb.CreateVector(v);
  }
  flatbuffers::Offset<flatbuffers::String> modality(flatbuffers::FlatBufferBuilder& fbb) {
    static const char* const kModalities[] = {"vision", "prompt", "", "audio"};
    if (chance(3)) return fbb.CreateString(std::string(below(300), 'm'));
    return fbb.CreateString(kModalities[below(std::size(kModalities))]);
  }

  // One RequestMsg body of request type `type` (NONE: no body).
  Bytes request(uint64_t msg_id, wire::Request type) {
    using R = wire::Request;
    flatbuffers::FlatBufferBuilder fbb;
    auto str = [&](const std::string& s) { return present() ? fbb.CreateString(s) : 0; };
    auto key_vec = [&] {
      auto k = keys();
      return present() ? fbb.CreateVectorOfStructs(k) : 0;
    };
    flatbuffers::Offset<void> body;
    switch (type) {
      case R::NONE:
        break;
      case R::HelloReq:
        body = wire::CreateHelloReq(fbb, chance(90) ? kProtocolVersion : below(4),
                                    static_cast<uint32_t>(next()), str("fuzz"))
                   .Union();
        break;
      case R::MapArenaReq:
        body = wire::CreateMapArenaReq(fbb, chance(90) ? below(3) : next()).Union();
        break;
      case R::LookupReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreateLookupReq(fbb, n, k, chance(50)).Union();
        break;
      }
      case R::PutBeginReq: {
        const bool fusion = chance(25);
        auto n = str(ns());
        auto k = key();
        auto l = present() ? layout(fbb, fusion) : 0;
        std::vector<uint8_t> md(chance(3) ? 65537 : below(64));
        auto m = fusion && present() ? fbb.CreateVector(md) : 0;
        wire::PutBeginReqBuilder b(fbb);
        if (n.o) b.add_namespace_(n);
        if (present()) b.add_key(&k);
        if (l.o) b.add_layout(l);
        b.add_fusion(fusion);
        if (m.o) b.add_metadata(m);
        b.add_device(static_cast<int32_t>(chance(80) ? -1 : static_cast<int64_t>(below(4)) - 2));
        body = b.Finish().Union();
        break;
      }
      case R::SealReq:
        body = wire::CreateSealReq(fbb, id()).Union();
        break;
      case R::AbortReq:
        body = wire::CreateAbortReq(fbb, id()).Union();
        break;
      case R::GetReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreateGetReq(fbb, n, k, static_cast<uint8_t>(chance(70) ? 0 : below(3)),
                                  static_cast<int32_t>(chance(80) ? -1 : below(3)))
                   .Union();
        break;
      }
      case R::ReleaseReq: {
        std::vector<uint64_t> ids(below(6));
        for (auto& x : ids) x = id();
        body = wire::CreateReleaseReq(fbb, present() ? fbb.CreateVector(ids) : 0).Union();
        break;
      }
      case R::RemoveReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreateRemoveReq(fbb, n, k).Union();
        break;
      }
      case R::StatsReq:
        body = wire::CreateStatsReq(fbb).Union();
        break;
      case R::EvictReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreateEvictReq(fbb, n, k, chance(30), static_cast<uint8_t>(below(5))).Union();
        break;
      }
      case R::ListReq:
        body = wire::CreateListReq(fbb, str(ns()), static_cast<uint32_t>(below(20)), chance(30),
                                   chance(30))
                   .Union();
        break;
      case R::ClientsReq:
        body = wire::CreateClientsReq(fbb).Union();
        break;
      case R::HealthReq:
        body = wire::CreateHealthReq(fbb).Union();
        break;
      case R::ConfigReq:
        body = wire::CreateConfigReq(fbb).Union();
        break;
      case R::CompactReq:
        body = wire::CreateCompactReq(fbb).Union();
        break;
      case R::VerifyReq:
        body = wire::CreateVerifyReq(fbb).Union();
        break;
      case R::GetFusionReq: {
        auto n = str(ns());
        auto k = key();
        wire::GetFusionReqBuilder b(fbb);
        if (n.o) b.add_namespace_(n);
        if (present()) b.add_key(&k);
        body = b.Finish().Union();
        break;
      }
      case R::AddEmbeddingsReq: {
        auto n = str(ns());
        std::vector<flatbuffers::Offset<wire::ChunkEmbeddings>> chunks(below(3) +
                                                                       (chance(90) ? 1 : 0));
        for (auto& c : chunks) {
          std::vector<flatbuffers::Offset<wire::ModalityVector>> vs(below(3) + 1);
          for (auto& v : vs)
            v = wire::CreateModalityVector(fbb, present() ? modality(fbb) : 0,
                                           present() ? floats(fbb) : 0);
          auto vv = present() ? fbb.CreateVector(vs) : 0;
          auto k = key();
          wire::ChunkEmbeddingsBuilder b(fbb);
          if (present()) b.add_key(&k);
          if (vv.o) b.add_vectors(vv);
          c = b.Finish();
        }
        auto cv = present() ? fbb.CreateVector(chunks) : 0;
        body = wire::CreateAddEmbeddingsReq(fbb, n, cv).Union();
        break;
      }
      case R::SearchReq: {
        auto n = str(ns());
        std::vector<flatbuffers::Offset<wire::ModalityQuery>> qs(below(3) + (chance(90) ? 1 : 0));
        for (auto& q : qs) {
          auto m = present() ? modality(fbb) : 0;
          auto f = present() ? floats(fbb) : 0;
          q = wire::CreateModalityQuery(fbb, m, f,
                                        chance(70) ? 0.f : float(below(200)) / 100.f - 0.5f,
                                        chance(80) ? 1.f : float(below(300)) / 100.f - 1.f);
        }
        auto qv = present() ? fbb.CreateVector(qs) : 0;
        body =
            wire::CreateSearchReq(
                fbb, n, qv, static_cast<uint32_t>(chance(90) ? 1 + below(8) : next()), chance(40))
                .Union();
        break;
      }
      case R::MapGpuPoolReq:
        body = wire::CreateMapGpuPoolReq(fbb, static_cast<uint32_t>(chance(90) ? below(3) : next()))
                   .Union();
        break;
      case R::OpenChannelReq:
        body = wire::CreateOpenChannelReq(fbb).Union();
        break;
      case R::ResolveReq:
        body = wire::CreateResolveReq(fbb, str(ns())).Union();
        break;
      case R::MapIndexReq:
        body = wire::CreateMapIndexReq(fbb, static_cast<uint32_t>(chance(90) ? below(3) : next()))
                   .Union();
        break;
      case R::PinReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreatePinReq(fbb, n, k, chance(50) ? 0 : below(5000),
                                  static_cast<uint8_t>(chance(80) ? 1 : below(3)),
                                  static_cast<int32_t>(chance(80) ? -1 : below(3)))
                   .Union();
        break;
      }
      case R::UnpinReq: {
        auto n = str(ns());
        auto k = key_vec();
        body = wire::CreateUnpinReq(fbb, n, k).Union();
        break;
      }
      case R::PutBatchReq: {
        auto n = str(ns());
        std::vector<flatbuffers::Offset<wire::PutItem>> items(chance(3) ? below(300) : below(5));
        for (auto& item : items) {
          auto l = present() ? layout(fbb) : 0;
          auto k = key();
          wire::PutItemBuilder b(fbb);
          if (present()) b.add_key(&k);
          if (l.o) b.add_layout(l);
          item = b.Finish();
        }
        auto v = present() ? fbb.CreateVector(items) : 0;
        body = wire::CreatePutBatchReq(
                   fbb, n, v,
                   static_cast<int32_t>(chance(70) ? -1 : static_cast<int64_t>(below(4)) - 2),
                   static_cast<uint8_t>(chance(70) ? 0 : below(3)))
                   .Union();
        break;
      }
      case R::SealBatchReq: {
        std::vector<uint64_t> ids(chance(3) ? below(500) : below(5));
        for (auto& x : ids) x = id();
        body = wire::CreateSealBatchReq(fbb, present() ? fbb.CreateVector(ids) : 0).Union();
        break;
      }
    }
    // Now and then releases carried on the request, and a one-way request (no reply).
    flatbuffers::Offset<flatbuffers::Vector<uint64_t>> releases;
    if (chance(10)) {
      std::vector<uint64_t> ids(below(5));
      for (auto& x : ids) x = id();
      releases = fbb.CreateVector(ids);
    }
    return body_of(fbb, wire::CreateRequestMsg(fbb, msg_id, type, body, releases, chance(5)));
  }

  // A request of a random type; now and then a type with no body, or one the schema lacks.
  Bytes any_request(uint64_t msg_id) {
    constexpr auto kLast = static_cast<uint64_t>(wire::Request::MAX);
    const auto type = static_cast<wire::Request>(chance(97) ? 1 + below(kLast) : below(256));
    if (chance(4)) return no_body(msg_id, type);
    return request(msg_id, type);
  }

 private:
  uint64_t s_;
};

}  // namespace kvtier::fuzz
