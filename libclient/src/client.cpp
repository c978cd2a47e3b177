#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "common/layout.h"
#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {

// What a Lease needs to give its blocks back and keep its memory mapped.
struct Lease::State {
  // Strong: the connection (and so the daemon's pins) lives as long as any lease on it, even
  // when its Client is gone; otherwise the blocks could be evicted under live views.
  std::shared_ptr<Client::Impl> conn;
  std::vector<uint64_t> lease_ids;
  std::vector<std::shared_ptr<ArenaMapping>> mappings;
};

bool TensorView::verify() const {
  return checksum64(data, bytes) == checksum;
}

const TensorView* LeasedBlock::tensor(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

Lease::Lease(Lease&&) noexcept = default;
Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    (void)release();
    state_ = std::move(other.state_);
    blocks_ = std::move(other.blocks_);
  }
  return *this;
}
Lease::~Lease() {
  (void)release();
}

size_t Lease::found() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b.found();
  return n;
}

Status Lease::release() {
  if (!state_) return {};
  auto state = std::move(state_);
  blocks_.clear();
  if (state->lease_ids.empty()) return {};
  auto conn = state->conn;
  std::lock_guard lock(conn->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto req = wire::CreateReleaseReq(fbb, fbb.CreateVector(state->lease_ids));
  auto resp = conn->call(fbb, wire::Request::ReleaseReq, req.Union());
  // A dead connection has released everything on the daemon's side already.
  if (!resp && resp.status().code() == Errc::kUnavailable) return {};
  return resp.status();
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;
uint64_t Client::session_id() const {
  return impl_->session_id;
}
const std::string& Client::socket_path() const {
  return impl_->socket_path;
}

Result<uint32_t> Client::lookup(std::string_view ns, std::span<const BlockKey> keys) {
  if (keys.empty()) return 0u;
  std::lock_guard lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb(64 + keys.size() * 16);
  auto req = wire::CreateLookupReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                   wire_util::keys_to_wire(fbb, keys));
  auto resp = impl_->call(fbb, wire::Request::LookupReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_LookupResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad lookup reply");
  return body->matched();
}

Status Client::put(std::string_view ns, const BlockKey& key, std::span<const TensorIn> tensors) {
  BlockLayout layout;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    TensorLayout tl;
    tl.name = t.name;
    tl.dtype = t.dtype;
    tl.shape = t.shape;
    tl.nf4_layout = t.nf4_layout;
    tl.offset = off;
    tl.bytes = tl.raw_bytes = tl.elements() * dtype_size(t.dtype);
    if (t.data == nullptr && tl.bytes > 0)
      return error(Errc::kInvalidArgument, "tensor '" + t.name + "' has no data");
    off = align_up(off + tl.bytes, kTensorAlignment);
    layout.tensors.push_back(std::move(tl));
  }
  layout.total_bytes = off;
  if (Status st = validate_put_layout(layout, UINT64_MAX); !st) return st;

  std::lock_guard lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto wkey = wire_util::to_wire(key);
  auto req = wire::CreatePutBeginReq(fbb, fbb.CreateString(ns.data(), ns.size()), &wkey,
                                     wire_util::to_wire(fbb, layout));
  auto resp = impl_->call(fbb, wire::Request::PutBeginReq, req.Union());
  if (!resp) return resp.status();
  const auto* begin = (*resp)->msg->body_as_PutBeginResp();
  if (begin == nullptr) return error(Errc::kProtocol, "bad put reply");
  const uint64_t put_id = begin->put_id();
  auto abort = [&](Status why) {
    flatbuffers::FlatBufferBuilder f;
    (void)impl_->call(f, wire::Request::AbortReq, wire::CreateAbortReq(f, put_id).Union());
    return why;
  };
  if (begin->staging_fd_attached()) {
    int sfd = (*resp)->take_fd();
    if (sfd < 0) return abort(error(Errc::kProtocol, "staging descriptor missing"));
    void* p = ::mmap(nullptr, begin->staging_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    int e = errno;
    ::close(sfd);
    if (p == MAP_FAILED)
      return abort(error(Errc::kIo, std::string("mmap staging: ") + std::strerror(e)));
    impl_->staging = static_cast<std::byte*>(p);
    impl_->staging_bytes = begin->staging_bytes();
  }
  if (impl_->staging == nullptr || begin->staging_offset() > impl_->staging_bytes ||
      layout.total_bytes > impl_->staging_bytes - begin->staging_offset())
    return abort(error(Errc::kProtocol, "staging range outside the staging area"));
  std::byte* dst = impl_->staging + begin->staging_offset();
  for (size_t i = 0; i < tensors.size(); ++i)
    std::memcpy(dst + layout.tensors[i].offset, tensors[i].data, layout.tensors[i].bytes);
  flatbuffers::FlatBufferBuilder sfbb;
  auto seal = impl_->call(sfbb, wire::Request::SealReq, wire::CreateSealReq(sfbb, put_id).Union());
  return seal.status();
}

Result<Lease> Client::get(std::string_view ns, std::span<const BlockKey> keys) {
  Lease lease;
  if (keys.empty()) return lease;
  std::lock_guard lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb(64 + keys.size() * 16);
  auto req = wire::CreateGetReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                wire_util::keys_to_wire(fbb, keys));
  auto resp = impl_->call(fbb, wire::Request::GetReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_GetResp();
  if (body == nullptr || body->blocks() == nullptr) return error(Errc::kProtocol, "bad get reply");
  auto state = std::make_shared<Lease::State>();
  state->conn = impl_;
  Status failure;
  for (const auto* b : *body->blocks()) {
    LeasedBlock lb;
    if (b->key()) lb.key = wire_util::from_wire(*b->key());
    lb.code = static_cast<Errc>(b->code());
    if (lb.code == Errc::kOk) {
      state->lease_ids.push_back(b->lease_id());
      auto m = impl_->arena(b->arena());
      if (!m) {
        failure = m.status();
      } else {
        std::shared_ptr<ArenaMapping> mapping = *m;
        if (std::find(state->mappings.begin(), state->mappings.end(), mapping) ==
            state->mappings.end())
          state->mappings.push_back(mapping);
        BlockLayout layout = wire_util::from_wire(b->layout());
        for (auto& t : layout.tensors) {
          // Never trust an offset blindly: a view must lie inside the mapping.
          if (b->offset() > mapping->size || t.offset > mapping->size - b->offset() ||
              t.bytes > mapping->size - b->offset() - t.offset) {
            failure = error(Errc::kCorrupt, "tensor '" + t.name + "' lies outside the arena");
            break;
          }
          TensorView v;
          v.name = std::move(t.name);
          v.dtype = t.dtype;
          v.shape = std::move(t.shape);
          v.strides = std::move(t.strides);
          v.codec = t.codec;
          v.nf4_layout = t.nf4_layout;
          v.data = mapping->base + b->offset() + t.offset;
          v.bytes = t.bytes;
          v.raw_bytes = t.raw_bytes;
          v.checksum = t.checksum;
          lb.tensors.push_back(std::move(v));
        }
      }
    }
    lease.blocks_.push_back(std::move(lb));
  }
  if (!failure.is_ok()) {
    // Give back what was granted before reporting (mu is held: call directly).
    flatbuffers::FlatBufferBuilder rel;
    auto r = wire::CreateReleaseReq(rel, rel.CreateVector(state->lease_ids));
    (void)impl_->call(rel, wire::Request::ReleaseReq, r.Union());
    return failure;
  }
  lease.state_ = std::move(state);
  return lease;
}

Result<RemoveCount> Client::remove(std::string_view ns, std::span<const BlockKey> keys) {
  std::lock_guard lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto req = wire::CreateRemoveReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                   wire_util::keys_to_wire(fbb, keys));
  auto resp = impl_->call(fbb, wire::Request::RemoveReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_RemoveResp();
  if (body == nullptr) return error(Errc::kProtocol, "bad remove reply");
  return RemoveCount{body->removed(), body->deferred()};
}

}  // namespace kvtier
