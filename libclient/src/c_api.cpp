// The C ABI over the C++ client.  Exceptions never cross it: allocation failures become
// KVTIER internal errors.
#include "kvtier/kvtier.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "kvtier/client.h"

struct kvtier_client {
  std::unique_ptr<kvtier::Client> client;
};
struct kvtier_lease {
  kvtier::Lease lease;
};

namespace {

thread_local std::string g_last_error;

int fail(const kvtier::Status& s) {
  g_last_error = s.to_string();
  return static_cast<int>(s.code());
}

int ok() {
  g_last_error.clear();
  return 0;
}

std::span<const kvtier::BlockKey> keys_of(const kvtier_key* keys, size_t n) {
  static_assert(sizeof(kvtier_key) == sizeof(kvtier::BlockKey));
  return {reinterpret_cast<const kvtier::BlockKey*>(keys), n};
}

template <typename F>
int guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return fail(kvtier::error(kvtier::Errc::kInternal, e.what()));
  }
}

}  // namespace

extern "C" {

const char* kvtier_last_error(void) {
  return g_last_error.c_str();
}
const char* kvtier_version(void) {
  return KVTIER_VERSION;
}

int kvtier_connect(const char* socket, kvtier_client** out) {
  return kvtier_connect_device(socket, -1, out);
}

int kvtier_connect_device(const char* socket, int device, kvtier_client** out) {
  return guarded([&] {
    kvtier::ClientOptions o;
    o.socket = socket ? socket : "";
    o.device = device;
    auto c = kvtier::Client::connect(o);
    if (!c) return fail(c.status());
    *out = new kvtier_client{std::move(c).value()};
    return ok();
  });
}

void kvtier_disconnect(kvtier_client* client) {
  delete client;
}

int kvtier_chain_keys(const char* ns, const uint32_t* tokens, size_t n_tokens, size_t chunk_tokens,
                      kvtier_key* keys, size_t capacity, size_t* count) {
  return guarded([&] {
    if (chunk_tokens == 0)
      return fail(kvtier::error(kvtier::Errc::kInvalidArgument, "chunk_tokens must be > 0"));
    auto k = kvtier::chain_keys(ns ? ns : "", {tokens, n_tokens}, chunk_tokens);
    if (count) *count = k.size();
    for (size_t i = 0; i < k.size() && i < capacity; ++i) keys[i] = {k[i].lo, k[i].hi};
    return ok();
  });
}

int kvtier_lookup(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                  uint32_t* matched) {
  return guarded([&] {
    auto r = c->client->lookup(ns ? ns : "", keys_of(keys, n));
    if (!r) return fail(r.status());
    *matched = *r;
    return ok();
  });
}

int kvtier_lookup_flags(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                        uint32_t flags, uint32_t* matched) {
  return guarded([&] {
    if ((flags & ~(KVTIER_LOOKUP_LOCAL_ONLY | KVTIER_LOOKUP_DAEMON | KVTIER_LOOKUP_INDEX)) != 0 ||
        ((flags & KVTIER_LOOKUP_DAEMON) && (flags & KVTIER_LOOKUP_INDEX)))
      return fail(kvtier::error(kvtier::Errc::kInvalidArgument, "unknown lookup flags"));
    kvtier::LookupOptions o;
    o.local_only = (flags & KVTIER_LOOKUP_LOCAL_ONLY) != 0;
    if (flags & KVTIER_LOOKUP_DAEMON) o.source = kvtier::LookupSource::kDaemon;
    if (flags & KVTIER_LOOKUP_INDEX) o.source = kvtier::LookupSource::kIndex;
    auto r = c->client->lookup(ns ? ns : "", keys_of(keys, n), o);
    if (!r) return fail(r.status());
    *matched = *r;
    return ok();
  });
}

int kvtier_put(kvtier_client* c, const char* ns, kvtier_key key, const kvtier_tensor_in* tensors,
               size_t n_tensors) {
  return guarded([&] {
    std::vector<kvtier::TensorIn> in(n_tensors);
    for (size_t i = 0; i < n_tensors; ++i) {
      in[i].name = tensors[i].name ? tensors[i].name : "";
      in[i].dtype = static_cast<kvtier::DType>(tensors[i].dtype);
      in[i].shape.assign(tensors[i].shape, tensors[i].shape + tensors[i].rank);
      in[i].data = tensors[i].data;
      in[i].nf4_layout = static_cast<kvtier::Nf4Layout>(tensors[i].nf4_layout);
    }
    auto st = c->client->put(ns ? ns : "", kvtier::BlockKey{key.lo, key.hi}, in);
    return st ? ok() : fail(st);
  });
}

int kvtier_put_batch(kvtier_client* c, const char* ns, const kvtier_put_item* items, size_t n,
                     int staging, int device, int* results) {
  return guarded([&] {
    if (staging < KVTIER_STAGING_AUTO || staging > KVTIER_STAGING_DEVICE)
      return fail(kvtier::error(kvtier::Errc::kInvalidArgument, "unknown staging"));
    std::vector<std::vector<kvtier::TensorIn>> tensors(n);
    std::vector<kvtier::PutItem> batch(n);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < items[i].n_tensors; ++j) {
        const kvtier_put_tensor& t = items[i].tensors[j];
        kvtier::TensorIn in;
        in.name = t.name ? t.name : "";
        in.dtype = static_cast<kvtier::DType>(t.dtype);
        in.shape.assign(t.shape, t.shape + t.rank);
        in.data = t.data;
        in.nf4_layout = static_cast<kvtier::Nf4Layout>(t.nf4_layout);
        in.device = t.device;
        for (size_t s = 0; s < t.n_segments; ++s)
          in.segments.push_back({t.segments[s].data, t.segments[s].bytes});
        tensors[i].push_back(std::move(in));
      }
      batch[i] = kvtier::PutItem{kvtier::BlockKey{items[i].key.lo, items[i].key.hi}, tensors[i]};
    }
    kvtier::PutOptions o;
    o.staging = static_cast<kvtier::PutStaging>(staging);
    o.device = device;
    auto r = c->client->put_batch(ns ? ns : "", batch, o);
    if (!r) return fail(r.status());
    for (size_t i = 0; i < n; ++i)
      if (results) results[i] = static_cast<int>((*r)[i].code());
    return ok();
  });
}

int kvtier_get(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
               kvtier_lease** out) {
  return guarded([&] {
    auto r = c->client->get(ns ? ns : "", keys_of(keys, n));
    if (!r) return fail(r.status());
    *out = new kvtier_lease{std::move(r).value()};
    return ok();
  });
}

int kvtier_get_gpu(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n, int device,
                   kvtier_lease** out) {
  return guarded([&] {
    auto r = c->client->get(ns ? ns : "", keys_of(keys, n), kvtier::GetOptions{true, device});
    if (!r) return fail(r.status());
    *out = new kvtier_lease{std::move(r).value()};
    return ok();
  });
}

int kvtier_get_gpu_async(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                         int device, kvtier_lease** out) {
  return guarded([&] {
    kvtier::GetOptions o{true, device};
    o.async = true;
    auto r = c->client->get(ns ? ns : "", keys_of(keys, n), o);
    if (!r) return fail(r.status());
    *out = new kvtier_lease{std::move(r).value()};
    return ok();
  });
}

int kvtier_lease_wait(kvtier_lease* lease, void* stream) {
  return guarded([&] {
    if (kvtier::Status st = lease->lease.wait(stream); !st) return fail(st);
    return ok();
  });
}

int kvtier_lease_block_device(const kvtier_lease* lease, size_t block) {
  if (block >= lease->lease.size()) return -1;
  return lease->lease.block(block).on_gpu ? lease->lease.block(block).device : -1;
}

int kvtier_remove(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                  uint32_t* removed) {
  return guarded([&] {
    auto r = c->client->remove(ns ? ns : "", keys_of(keys, n));
    if (!r) return fail(r.status());
    if (removed) *removed = r->removed + r->deferred;
    return ok();
  });
}

int kvtier_flush_releases(kvtier_client* c) {
  return guarded([&] {
    if (kvtier::Status st = c->client->flush_releases(); !st) return fail(st);
    return ok();
  });
}

int kvtier_pin(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n, uint64_t ttl_ms,
               int device, uint32_t* pinned) {
  return guarded([&] {
    kvtier::PinOptions o;
    o.ttl_ms = ttl_ms;
    o.gpu = device >= 0;
    o.device = device;
    auto r = c->client->pin(ns ? ns : "", keys_of(keys, n), o);
    if (!r) return fail(r.status());
    if (pinned) *pinned = r->pinned;
    return ok();
  });
}

int kvtier_unpin(kvtier_client* c, const char* ns, const kvtier_key* keys, size_t n,
                 uint32_t* unpinned) {
  return guarded([&] {
    auto r = c->client->unpin(ns ? ns : "", keys_of(keys, n));
    if (!r) return fail(r.status());
    if (unpinned) *unpinned = *r;
    return ok();
  });
}

int kvtier_stats_json(kvtier_client* c, char** json) {
  return guarded([&] {
    auto r = c->client->stats_json();
    if (!r) return fail(r.status());
    *json = static_cast<char*>(std::malloc(r->size() + 1));
    std::memcpy(*json, r->c_str(), r->size() + 1);
    return ok();
  });
}

void kvtier_free(void* p) {
  std::free(p);
}

size_t kvtier_lease_blocks(const kvtier_lease* lease) {
  return lease->lease.size();
}

int kvtier_lease_block_status(const kvtier_lease* lease, size_t block) {
  if (block >= lease->lease.size()) return static_cast<int>(kvtier::Errc::kInvalidArgument);
  return static_cast<int>(lease->lease.block(block).code);
}

size_t kvtier_lease_tensor_count(const kvtier_lease* lease, size_t block) {
  return block < lease->lease.size() ? lease->lease.block(block).tensors.size() : 0;
}

int kvtier_lease_tensor(const kvtier_lease* lease, size_t block, size_t tensor,
                        kvtier_tensor_view* out) {
  if (block >= lease->lease.size() || tensor >= lease->lease.block(block).tensors.size())
    return fail(kvtier::error(kvtier::Errc::kInvalidArgument, "no such block or tensor"));
  const auto& t = lease->lease.block(block).tensors[tensor];
  out->name = t.name.c_str();
  out->dtype = static_cast<int>(t.dtype);
  out->codec = static_cast<int>(t.codec);
  out->nf4_layout = static_cast<int>(t.nf4_layout);
  out->rank = t.shape.size();
  out->shape = t.shape.data();
  out->data = t.data;
  out->bytes = t.bytes;
  out->raw_bytes = t.raw_bytes;
  out->checksum = t.checksum;
  return ok();
}

int kvtier_lease_tensor_decode(const kvtier_lease* lease, size_t block, size_t tensor,
                               int out_dtype, void* dst, size_t dst_bytes) {
  if (block >= lease->lease.size() || tensor >= lease->lease.block(block).tensors.size())
    return fail(kvtier::error(kvtier::Errc::kInvalidArgument, "no such block or tensor"));
  auto st = kvtier::decode(lease->lease.block(block).tensors[tensor],
                           static_cast<kvtier::DType>(out_dtype),
                           {static_cast<std::byte*>(dst), dst_bytes});
  return st ? ok() : fail(st);
}

uint64_t kvtier_nf4_encoded_size(int dtype, int nf4_layout, int double_quant, uint64_t rows,
                                 uint64_t cols) {
  return kvtier::nf4_encoded_size(static_cast<kvtier::DType>(dtype),
                                  static_cast<kvtier::Nf4Layout>(nf4_layout), double_quant != 0,
                                  rows, cols);
}

int kvtier_nf4_quantize(int dtype, int nf4_layout, int double_quant, uint64_t rows, uint64_t cols,
                        const void* src, size_t src_bytes, void* dst, size_t dst_bytes) {
  auto st = kvtier::nf4_quantize(static_cast<kvtier::DType>(dtype),
                                 static_cast<kvtier::Nf4Layout>(nf4_layout), double_quant != 0,
                                 rows, cols, {static_cast<const std::byte*>(src), src_bytes},
                                 {static_cast<std::byte*>(dst), dst_bytes});
  return st ? ok() : fail(st);
}

int kvtier_nf4_dequantize(const void* encoded, size_t encoded_bytes, int out_dtype, void* dst,
                          size_t dst_bytes) {
  auto st = kvtier::nf4_dequantize({static_cast<const std::byte*>(encoded), encoded_bytes},
                                   static_cast<kvtier::DType>(out_dtype),
                                   {static_cast<std::byte*>(dst), dst_bytes});
  return st ? ok() : fail(st);
}

int kvtier_lease_release(kvtier_lease* lease) {
  if (lease == nullptr) return 0;
  auto st = lease->lease.release();
  delete lease;
  return st ? ok() : fail(st);
}

}  // extern "C"
