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
  // Blocks of an async get not ready yet: their index and pool.
  std::vector<std::pair<size_t, std::shared_ptr<ArenaMapping>>> unready;
};

bool TensorView::verify() const {
  return host_accessible && checksum64(data, bytes) == checksum;
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

Status Lease::wait(void* stream) {
  if (!state_) return {};
  for (const auto& [i, mapping] : state_->unready)
    if (Status st = mapping->wait_event(blocks_[i].ready_event, stream); !st) return st;
  if (stream == nullptr) {  // ready for everyone now
    for (const auto& [i, mapping] : state_->unready) blocks_[i].ready_event = 0;
    state_->unready.clear();
  }
  return {};
}

Status Lease::release() {
  if (!state_) return {};
  auto state = std::move(state_);
  blocks_.clear();
  if (state->lease_ids.empty()) return {};
  // The views are gone (blocks_ cleared): from here the daemon may reuse the memory.
  return state->conn->release_leases(std::move(state->lease_ids));
}

Status Client::flush_releases() {
  MutexLock lock(impl_->mu);
  return impl_->post_releases({});
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;
std::string Client::gpu_backend() const {
  return impl_->gpu_backend;
}
bool Client::uses_request_channel() const {
  MutexLock lock(impl_->mu);
  return impl_->channel != nullptr;
}

uint64_t Client::session_id() const {
  return impl_->session_id;
}
const std::string& Client::socket_path() const {
  return impl_->socket_path;
}

Status Client::put(std::string_view ns, const BlockKey& key, std::span<const TensorIn> tensors) {
  // Device memory and pieces go through the batch path, which copies them into staging.
  if (std::any_of(tensors.begin(), tensors.end(),
                  [](const TensorIn& t) { return t.device >= 0 || !t.segments.empty(); })) {
    const PutItem item{key, tensors};
    auto r = put_batch(ns, std::span(&item, 1));
    if (!r) return r.status();
    return r->front();
  }
  return put_impl(ns, key, tensors, false, {});
}

Status Client::put_fusion(std::string_view ns, const BlockKey& chunk,
                          std::span<const TensorIn> tensors, std::string_view metadata) {
  return put_impl(ns, chunk, tensors, true, metadata);
}

Status Client::put_impl(std::string_view ns, const BlockKey& key, std::span<const TensorIn> tensors,
                        bool fusion, std::string_view metadata) {
  for (const auto& t : tensors)
    if (t.device >= 0 || !t.segments.empty())
      return error(Errc::kInvalidArgument, "tensor '" + t.name +
                                               "': fusion state is put from contiguous host "
                                               "memory");
  auto staged = staged_layout(tensors);
  if (!staged) return staged.status();
  const BlockLayout& layout = *staged;

  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb;
  auto wkey = wire_util::to_wire(key);
  auto md =
      fusion ? fbb.CreateVector(reinterpret_cast<const uint8_t*>(metadata.data()), metadata.size())
             : 0;
  auto req = wire::CreatePutBeginReq(fbb, fbb.CreateString(ns.data(), ns.size()), &wkey,
                                     wire_util::to_wire(fbb, layout), fusion, md,
                                     impl_->device < 0 ? -1 : impl_->daemon_device(impl_->device));
  auto resp = impl_->call(fbb, wire::Request::PutBeginReq, req.Union());
  if (!resp) return resp.status();
  const auto* begin = (*resp)->msg->body_as_PutBeginResp();
  if (begin == nullptr) return error(Errc::kProtocol, "bad put reply");
  const uint64_t put_id = begin->put_id();
  auto abort = [&](Status why) {
    impl_->mu.assert_held();  // put()'s
    flatbuffers::FlatBufferBuilder f;
    (void)impl_->call(f, wire::Request::AbortReq, wire::CreateAbortReq(f, put_id).Union());
    return why;
  };
  if (begin->staging_fd_attached()) {
    if (Status st = impl_->map_staging((*resp)->take_fd(), begin->staging_bytes()); !st)
      return abort(st);
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

namespace {

// One leased block's tensor views, split into KV and fusion tensors.  Fails when a tensor
// would lie outside the mapping (never trust an offset blindly).
Status map_tensors(const wire::LeasedBlock& b, const ArenaMapping& mapping, LeasedBlock& lb) {
  BlockLayout layout = wire_util::from_wire(b.layout());
  for (auto& t : layout.tensors) {
    if (b.offset() > mapping.size || t.offset > mapping.size - b.offset() ||
        t.bytes > mapping.size - b.offset() - t.offset)
      return error(Errc::kCorrupt, "tensor '" + t.name + "' lies outside the arena");
    TensorView v;
    v.name = std::move(t.name);
    v.dtype = t.dtype;
    v.shape = std::move(t.shape);
    v.strides = std::move(t.strides);
    v.codec = t.codec;
    v.nf4_layout = t.nf4_layout;
    v.data = mapping.base + b.offset() + t.offset;
    v.bytes = t.bytes;
    v.raw_bytes = t.raw_bytes;
    v.checksum = t.checksum;
    v.device = mapping.device;
    v.host_accessible = mapping.host_accessible;
    // Metadata in device memory (a CUDA GPU lease) stays a tensor, named ".metadata".
    if (v.name == kFusionMetadata && v.host_accessible) {
      lb.fusion_metadata.assign(reinterpret_cast<const char*>(v.data), v.bytes);
    } else if (is_fusion_tensor(v.name)) {
      v.name.erase(0, kFusionPrefix.size());
      lb.fusion.push_back(std::move(v));
    } else {
      lb.tensors.push_back(std::move(v));
    }
  }
  return {};
}

}  // namespace

Result<Lease> LeaseBuilder::build(const std::shared_ptr<Client::Impl>& impl,
                                  const std::vector<const wire::LeasedBlock*>& blocks) {
  Lease lease;
  auto state = std::make_shared<Lease::State>();
  state->conn = impl;
  Status failure;
  for (const auto* b : blocks) {
    if (b == nullptr) continue;
    LeasedBlock lb;
    if (b->key()) lb.key = wire_util::from_wire(*b->key());
    lb.code = static_cast<Errc>(b->code());
    if (lb.code == Errc::kOk) {
      // Recorded first: whatever happens next, the lease is given back.
      state->lease_ids.push_back(b->lease_id());
      const bool gpu = b->tier() == 0;  // the wire's tier 0 is the GPU tier
      lb.on_gpu = gpu;
      lb.device = gpu ? impl->client_device(b->device()) : -1;
      auto m = gpu ? impl->gpu_pool(b->arena()) : impl->arena(b->arena());
      if (!m) {
        failure = m.status();
      } else {
        if (std::find(state->mappings.begin(), state->mappings.end(), *m) == state->mappings.end())
          state->mappings.push_back(*m);
        if (Status st = map_tensors(*b, **m, lb); !st) failure = st;
        if (gpu && b->ready_event() != 0) {
          lb.ready_event = b->ready_event();
          state->unready.emplace_back(lease.blocks_.size(), *m);
        }
      }
    }
    lease.blocks_.push_back(std::move(lb));
  }
  if (!failure.is_ok()) {
    flatbuffers::FlatBufferBuilder rel;
    auto r = wire::CreateReleaseReq(rel, rel.CreateVector(state->lease_ids));
    (void)impl->call(rel, wire::Request::ReleaseReq, r.Union());
    return failure;
  }
  lease.state_ = std::move(state);
  return lease;
}

Result<Lease> Client::get(std::string_view ns, std::span<const BlockKey> keys, GetOptions options) {
  if (keys.empty()) return Lease();
  MutexLock lock(impl_->mu);
  flatbuffers::FlatBufferBuilder fbb(64 + keys.size() * 16);
  int device = -1;
  if (options.gpu) {
    auto d = impl_->gpu_request_device(options.device >= 0 ? options.device : impl_->device);
    if (!d) return d.status();
    device = *d;
  }
  auto req = wire::CreateGetReq(fbb, fbb.CreateString(ns.data(), ns.size()),
                                wire_util::keys_to_wire(fbb, keys), options.gpu ? 1 : 0, device,
                                options.gpu && options.async);
  auto resp = impl_->call(fbb, wire::Request::GetReq, req.Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_GetResp();
  if (body == nullptr || body->blocks() == nullptr) return error(Errc::kProtocol, "bad get reply");
  return LeaseBuilder::build(impl_, {body->blocks()->begin(), body->blocks()->end()});
}

Result<RemoveCount> Client::remove(std::string_view ns, std::span<const BlockKey> keys) {
  MutexLock lock(impl_->mu);
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
