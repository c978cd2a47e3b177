// libkvtier: the C++ client API of the kvtier cache daemon.
//
//   auto client = kvtier::Client::connect();            // $KVTIER_SOCKET or the default path
//   auto keys = kvtier::chain_keys("llama3-8b/fp16/v1/tenantA", tokens, 256);
//   uint32_t cached = client->lookup(ns, keys).value(); // longest cached prefix, one round trip
//   auto lease = client->get(ns, {keys.data(), cached}).value();
//   const kvtier::TensorView* k = lease.block(0).tensor("k");   // zero-copy, read-only
//
// Blocks of NF4 namespaces (the default) come back NF4-encoded: kvtier::decode() turns a
// tensor into fp16/bf16/fp32 in the caller's buffer in one call.
//
// A Client is one connection; its calls are serialised by an internal mutex, so it may be
// shared between threads.  Leases pin their blocks in the daemon until released (explicitly,
// by destruction, or when the connection closes).  Tensor data stays mapped for the life of
// the Lease even if the Client or the daemon goes away first.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/keys.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

// A tensor to store: contiguous row-major data of `dtype` and `shape`.
// One piece of a tensor's bytes (TensorIn::segments).
struct Segment {
  const void* data = nullptr;
  uint64_t bytes = 0;
};

struct TensorIn {
  std::string name;
  DType dtype = DType::kF16;
  std::vector<uint64_t> shape;
  const void* data = nullptr;
  // For namespaces stored as NF4: kColumnBlocks quantizes per channel (use it for keys).
  Nf4Layout nf4_layout = Nf4Layout::kRowBlocks;
  // >= 0: `data` (or the segments) is memory of this CUDA device, in this process's numbering
  // (with the daemon's host emulation, host memory standing in for it).  -1: host memory.
  int device = -1;
  // Non-empty: the tensor's bytes are these pieces, in order (its rows in a paged KV cache,
  // say), copied straight into staging with no gather copy first; `data` is then ignored.
  std::vector<Segment> segments{};
};

// Where a put's bytes travel (docs/gpu.md, "Device puts").  kHost: the connection's staging
// memfd.  kDevice: the connection's staging in GPU memory of PutOptions::device, filled with
// device-to-device copies; an fp16/bf16 block then reaches the GPU tier with one more device
// copy and no host round trip.  kAuto: kDevice when any tensor is device memory, else kHost.
enum class PutStaging : uint8_t { kAuto = 0, kHost = 1, kDevice = 2 };
struct PutOptions {
  PutStaging staging = PutStaging::kAuto;
  // The GPU (this process's numbering) whose tier an fp16/bf16 block lands in, and whose
  // staging a device put uses; -1: the first device tensor's, else ClientOptions::device.
  int device = -1;
};
struct PutItem {
  BlockKey key;
  std::span<const TensorIn> tensors;
};

// A read-only view of one stored tensor inside a leased block.
struct TensorView {
  std::string name;
  DType dtype = DType::kF16;
  std::vector<uint64_t> shape;
  std::vector<int64_t> strides;  // elements; empty = contiguous row-major
  Codec codec = Codec::kRaw;
  Nf4Layout nf4_layout = Nf4Layout::kRowBlocks;
  const std::byte* data = nullptr;  // stored bytes (NF4-encoded when codec is kNf4)
  uint64_t bytes = 0;               // stored bytes
  uint64_t raw_bytes = 0;           // bytes once decoded
  uint64_t checksum = 0;            // XXH3-64 of the stored bytes; 0 when not computed (GPU
                                    // tensors promoted from NF4: the device does not hash them)
  // -1: data is host memory.  >= 0: data is memory of this GPU, a device pointer valid in
  // this process's CUDA context (with the daemon's host emulation, shared host memory that
  // stands in for it: host_accessible is then true).
  int device = -1;
  bool host_accessible = true;  // data may be dereferenced by the CPU

  // Recomputes the checksum of the mapped bytes (false for memory the CPU cannot read).
  bool verify() const;
};

struct LeasedBlock {
  BlockKey key;
  Errc code = Errc::kOk;  // kNotFound when the key was not cached
  bool on_gpu = false;    // leased from a GPU tier (tensors' device >= 0)
  int device = -1;
  // An async GPU get's block whose bytes the device is still writing: the pool's ready event
  // (from 1) that Lease::wait() waits on; 0: ready.
  uint32_t ready_event = 0;
  std::vector<TensorView> tensors;  // the KV tensors
  // Fusion state stored with this chunk (put_fusion), names as given; empty if none.
  std::vector<TensorView> fusion;
  std::string fusion_metadata;
  const TensorView* tensor(std::string_view name) const;
  bool found() const { return code == Errc::kOk; }
};

class Client;
class LeaseBuilder;

// Zero-copy access to a batch of blocks.  Move-only; releases on destruction.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&&) noexcept;
  Lease& operator=(Lease&&) noexcept;
  ~Lease();

  size_t size() const { return blocks_.size(); }
  const LeasedBlock& block(size_t i) const { return blocks_.at(i); }
  const std::vector<LeasedBlock>& blocks() const { return blocks_; }
  size_t found() const;
  // Makes `stream` (a cudaStream_t; nullptr: the calling thread, which blocks) wait until
  // every block of an async get is written (GetOptions::async); the blocks are ready for
  // that stream's work queued after this.  Nothing to wait for with the host emulation, whose
  // device work is done before the daemon answers, or for blocks that are ready.
  Status wait(void* stream = nullptr);
  // Gives the blocks back to the daemon; the views are invalid afterwards.
  Status release();

 private:
  friend class Client;
  friend class LeaseBuilder;
  struct State;
  std::shared_ptr<State> state_;
  std::vector<LeasedBlock> blocks_;
};

// Embedding entries that point at a cached chunk (the semantic index, docs/index.md).
struct ModalityVector {
  std::string modality;  // e.g. "vision" (512-d), "prompt" (384-d)
  std::vector<float> values;
};
struct ChunkEmbeddings {
  BlockKey key;
  std::vector<ModalityVector> vectors;
};
struct SearchQuery {
  std::string modality;
  std::vector<float> values;
  float threshold = 0.f;  // cosine the chunk must reach in this modality
  float weight = 1.f;     // in the ranking score sum(weight*cos)/sum(weight)
};
struct SearchHit {
  BlockKey key;
  float score = 0.f;
  std::vector<float> similarities;  // cosine per query, in query order
};
struct SearchResult {
  std::vector<SearchHit> hits;  // best first
  Lease fusion;                 // with_fusion: the best hit's block (empty if it has none)
};
struct LookupResult {
  uint32_t matched = 0;
  Lease fusion;  // with fusion: the last matched chunk's block, when it has fusion state
};

struct RemoveCount {
  uint32_t removed = 0;
  uint32_t deferred = 0;  // leased now; freed when the last lease is released
};

struct EvictCount {
  uint32_t evicted = 0;         // from the host tier
  uint32_t skipped_leased = 0;  // host blocks left alone because they are leased
  uint64_t bytes = 0;           // host bytes freed
  uint32_t disk_evicted = 0;    // from the disk tier
  uint32_t gpu_evicted = 0;     // from the GPU tiers (their bytes are counted in `bytes`)
};

enum class TierSel : uint8_t { kAll = 0, kHost = 1, kDisk = 2, kGpu = 3 };

// Pins (docs/operations.md, "Pins"): keep cached blocks in one tier until unpinned or the TTL
// ends.  A pin is the daemon's, not the connection's: it outlives the client that made it.
struct PinOptions {
  uint64_t ttl_ms = 0;  // 0: no expiry; pinning a pinned block again restarts its TTL
  bool gpu = false;     // pin in a GPU tier (the block is promoted there) instead of the host
  int device = -1;      // the GPU; -1 = ClientOptions::device, else the daemon's first GPU tier
};
struct PinCount {
  uint32_t pinned = 0;        // keys pinned (refreshed ones included)
  uint32_t refreshed = 0;     // of them, keys that were pinned already
  uint64_t pinned_bytes = 0;  // the namespace's pinned bytes now
  uint64_t quota_bytes = 0;   // its quota ([[namespace]] pin_bytes)
};

// Where get() should lease blocks: host memory (the host tier's format: NF4 by default), or
// GPU memory (fp16/bf16 exactly as put, promoted from the host tier on the device when
// needed).  A GPU get falls back to a host lease for a block the GPU tier has no room for;
// check LeasedBlock::on_gpu.
struct GetOptions {
  bool gpu = false;
  int device = -1;  // the GPU; -1 = ClientOptions::device, else the daemon's first GPU tier
  // gpu: the daemon answers once the promotions are queued on the device, not done; blocks
  // still being written say so (LeasedBlock::ready_event).  Call Lease::wait() (on the stream
  // that reads them) before reading.  Without it the daemon waits before it answers.
  bool async = false;
};

// Where a lookup is answered.  kAuto: from the shared lookup index when this client mapped
// it (ClientOptions::lookup_index), with no round trip; from the daemon otherwise, and for
// the keys after the index's prefix in a namespace that uses the remote tier (the index
// lists this host's tiers only).  kIndex: from the index only (kUnavailable without one).
// kDaemon: one round trip to the daemon.
enum class LookupSource : uint8_t { kAuto = 0, kIndex = 1, kDaemon = 2 };

struct LookupOptions {
  // This host's tiers only: the daemon does not ask the remote tier (docs/remote.md).
  bool local_only = false;
  LookupSource source = LookupSource::kAuto;
};

// How Lease::release() gives blocks back (docs/protocol.md, "Releases without a round trip").
// kDeferred: no message of its own; the lease ids ride on this connection's next request
// (any request), and go one-way as soon as kMaxPendingReleases of them wait or
// Client::flush_releases() is called.  kPosted: a one-way ReleaseReq at once (one send, no
// reply awaited).  kRoundTrip: a ReleaseReq and its reply.  Either way a released block's
// memory is reused only after the daemon has the release, which the client sends only after
// it stops reading the block.
enum class ReleaseMode : uint8_t { kDeferred = 0, kPosted = 1, kRoundTrip = 2 };
constexpr size_t kMaxPendingReleases = 64;

struct ClientOptions {
  // Socket path; empty = $KVTIER_SOCKET, else the default (./var/kvtier.sock, then
  // /run/kvtier/kvtier.sock).
  std::string socket;
  std::string name;             // shown by `kvtierctl clients`
  uint32_t timeout_ms = 30000;  // per request
  // The CUDA device this process computes on, in this process's own numbering (its
  // CUDA_VISIBLE_DEVICES; the client translates to the daemon's by device UUID, docs/gpu.md)
  // (-1: not said).  fp16/bf16 puts land in that device's GPU tier (-1: the daemon's first)
  // when it has one; a device the daemon has no pool on takes the host path.
  int device = -1;
  // After sending a request, poll the socket for the reply this long before sleeping in
  // recvmsg (0: $KVTIER_BUSY_POLL_US when set, else sleep at once; at most 100000).  Spends
  // CPU to save the wake-up of a sleeping thread (tens of us between the vCPUs of a VM, a few
  // on bare metal); pair it with the daemon's daemon.busy_poll_us (docs/operations.md, "Busy
  // polling").
  uint32_t busy_poll_us = 0;
  // With busy_poll_us > 0, pass requests and replies through a shared-memory channel the
  // daemon opens for this connection, when the daemon polls too (daemon.busy_poll_us,
  // daemon.request_channel): no socket call on either side while both poll.  Otherwise, or
  // with $KVTIER_REQUEST_CHANNEL=0, the socket.
  bool request_channel = true;
  // Answer lookups from the daemon's shared lookup index (docs/protocol.md, "Lookup index"):
  // the namespace is resolved and the index mapped at the first lookup, then lookups read
  // shared memory.  false, or $KVTIER_LOOKUP_INDEX=0: every lookup asks the daemon.
  bool lookup_index = true;
  // Lease::release(): see ReleaseMode.  $KVTIER_RELEASE_MODE=deferred|posted|round_trip
  // overrides it.
  ReleaseMode release_mode = ReleaseMode::kDeferred;
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> connect(ClientOptions options = {});
  static Result<std::unique_ptr<Client>> connect(const std::string& socket) {
    ClientOptions o;
    o.socket = socket;
    return connect(o);
  }
  ~Client();

  // Number of leading keys cached (the longest cached prefix of a chain).  A namespace that
  // uses the remote tier is also looked up there after the local prefix (one batched round
  // trip from the daemon), unless options.local_only.  Answered from the shared lookup index
  // when mapped (options.source): a block reported cached may still be gone by the next get,
  // which stays authoritative.
  Result<uint32_t> lookup(std::string_view ns, std::span<const BlockKey> keys,
                          LookupOptions options = {});
  // Stores one block.  kAlreadyExists when the key is cached (blocks are immutable).
  Status put(std::string_view ns, const BlockKey& key, std::span<const TensorIn> tensors);
  // Stores many blocks in two round trips (one reserves every block and its staging, one seals
  // them all), from host or device memory (PutOptions).  One Status per item, in order:
  // kAlreadyExists for a cached key, kLimit when the staging area cannot hold the rest of the
  // batch (put them in another batch), as for put() otherwise.  Fails as a whole only for what
  // no item gets past (a bad namespace, no device staging, a lost connection).  A tensor's
  // sources must be ready: synchronise the stream that wrote them first.
  Result<std::vector<Status>> put_batch(std::string_view ns, std::span<const PutItem> items,
                                        PutOptions options = {});
  // Leases a batch; keys that are not cached come back with found() == false.
  Result<Lease> get(std::string_view ns, std::span<const BlockKey> keys, GetOptions options = {});
  // The daemon's GPU tier backend ("cuda", "emulation") and the devices with a pool, in this
  // process's numbering (devices this process does not see are left out); empty without a GPU
  // tier.  Device indices in GetOptions, PinOptions and LeasedBlock are this process's too.
  std::string gpu_backend() const;
  std::vector<int> gpu_devices() const;
  // Removes blocks from every tier; a pinned block too (its pin goes with it).
  Result<RemoveCount> remove(std::string_view ns, std::span<const BlockKey> keys);
  // Sends the releases that wait for this connection's next request (ReleaseMode::kDeferred)
  // now, one-way: for a client about to go idle while holding none of its blocks.
  Status flush_releases();

  // Pins cached blocks (all or nothing): they are not evicted from the tier they are pinned in
  // until unpin(), remove() or the TTL ends.  A block only a lower tier holds (disk, remote)
  // is promoted first.  kNotFound when a key is not cached; kNoSpace when the namespace's pin
  // quota would be exceeded (or the GPU tier has no room); nothing is pinned then.  The
  // namespace's access rule decides as for put.
  Result<PinCount> pin(std::string_view ns, std::span<const BlockKey> keys,
                       PinOptions options = {});
  Result<PinCount> pin(std::string_view ns, std::span<const BlockKey> keys, uint64_t ttl_ms) {
    PinOptions o;
    o.ttl_ms = ttl_ms;
    return pin(ns, keys, o);
  }
  // Drops pins; keys not pinned are not an error.  Returns how many were pinned.
  Result<uint32_t> unpin(std::string_view ns, std::span<const BlockKey> keys);

  // Fusion state: named tensors (+ opaque metadata) stored with a cached chunk, evicted,
  // demoted and restored with it.  kNotFound when the chunk is not cached.  A new put_fusion
  // replaces the chunk's previous fusion state.
  Status put_fusion(std::string_view ns, const BlockKey& chunk, std::span<const TensorIn> tensors,
                    std::string_view metadata = {});
  // A lease over the chunk's block; its LeasedBlock::fusion holds the fusion tensors.
  // kNotFound when the chunk is not cached or has no fusion state.
  Result<Lease> get_fusion(std::string_view ns, const BlockKey& chunk);
  // lookup() that also leases the last matched chunk's fusion state: one round trip.
  Result<LookupResult> lookup_with_fusion(std::string_view ns, std::span<const BlockKey> keys);

  // Semantic index: embedding entries for cached chunks (kNotFound otherwise).
  Status add_embeddings(std::string_view ns, std::span<const ChunkEmbeddings> chunks);
  // Up to k cached chunks whose every queried modality reaches its threshold, best first.
  Result<SearchResult> search(std::string_view ns, std::span<const SearchQuery> queries, uint32_t k,
                              bool with_fusion = false);

  // JSON documents (docs/operations.md).  health and stats need no admin rights.
  Result<std::string> stats_json();
  Result<std::string> health_json();
  // Admin (uid/gid in access.admin_*):
  Result<std::string> clients_json();
  Result<std::string> config_json();  // {"toml": "<effective settings>"}
  // pinned_only: just the pinned blocks (each entry has "pinned" and "pin_expires_unix_ms").
  Result<std::string> list_json(std::string_view ns = {}, uint32_t limit = 0,
                                bool fusion_only = false, bool pinned_only = false);
  Result<EvictCount> evict(std::string_view ns, std::span<const BlockKey> keys, bool all,
                           TierSel tier = TierSel::kAll);
  // Disk tier maintenance (admin); `progress(done, total)` is called as the daemon reports.
  // Both return the daemon's JSON report.
  using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
  Result<std::string> compact(const ProgressFn& progress = {});
  Result<std::string> verify(const ProgressFn& progress = {});

  uint64_t session_id() const;
  const std::string& socket_path() const;
  // Whether requests go through a shared-memory request channel (ClientOptions::request_channel).
  bool uses_request_channel() const;
  // Whether lookups of `ns` are answered from the shared lookup index (resolving it and
  // mapping the index if not done yet).
  bool uses_lookup_index(std::string_view ns);

  struct Impl;

 private:
  explicit Client(std::shared_ptr<Impl> impl);
  Status put_impl(std::string_view ns, const BlockKey& key, std::span<const TensorIn> tensors,
                  bool fusion, std::string_view metadata);
  std::shared_ptr<Impl> impl_;
};

// The socket a client connects to when none is given.
std::string default_socket_path();

// Bytes of `t` once decoded into `out` (its element count times the size of `out`).
uint64_t decoded_bytes(const TensorView& t, DType out);
// Decodes a leased tensor into dst (at least decoded_bytes(t, out)): NF4 is dequantized to
// out (kF16, kBF16 or kF32); a raw tensor is copied and out must be its own dtype.
Status decode(const TensorView& t, DType out, std::span<std::byte> dst);

// The NF4 codec the daemon stores with (docs/nf4.md), for callers that quantize themselves.
// A tensor is viewed as [rows, cols]: cols = the innermost axis, rows = all the others.
uint64_t nf4_encoded_size(DType dtype, Nf4Layout layout, bool double_quant, uint64_t rows,
                          uint64_t cols);
Status nf4_quantize(DType dtype, Nf4Layout layout, bool double_quant, uint64_t rows, uint64_t cols,
                    std::span<const std::byte> src, std::span<std::byte> dst);
Status nf4_dequantize(std::span<const std::byte> encoded, DType out, std::span<std::byte> dst);

}  // namespace kvtier
