// libkvtier internals: one connection to the daemon and the process-wide arena mappings.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <functional>

#include <cstddef>
#include <map>
#include <optional>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "common/channel.h"
#include "common/layout.h"
#include "common/lookup_index.h"
#include "common/protocol_generated.h"
#include "tiers/gpu/device_backend.h"
#include "kvtier/client.h"

namespace kvtier {

// A read-only mapping of one daemon arena, shared by every connection of this process to
// the same daemon instance (an arena is mapped once per process).  Unmapped when the last
// Lease and connection referring to it are gone.
struct ArenaMapping {
  const std::byte* base = nullptr;
  uint64_t size = 0;
  int device = -1;                          // >= 0: a GPU tier pool of this device
  bool host_accessible = true;              // false for CUDA device memory
  std::unique_ptr<gpu::ImportedPool> pool;  // GPU pools: unmapped by its destructor
  // A CUDA GPU pool's ready events (GpuPoolInfo.events), opened on first wait.
  std::vector<std::array<std::byte, 64>> event_handles;
  Mutex events_mu;
  std::vector<void*> events GUARDED_BY(events_mu);  // by slot - 1; null until opened
  // Makes `stream` (nullptr: the calling thread) wait for ready event `n` (from 1).  A pool
  // without event handles (the host emulation) has nothing to wait for.
  Status wait_event(uint32_t n, void* stream);
  ~ArenaMapping();
};

// A reply: the verified message and the buffer it lives in, plus any descriptors received.
struct Response {
  std::vector<std::byte> body;
  const wire::ResponseMsg* msg = nullptr;
  std::vector<int> fds;  // owned: closed by ~Response unless taken
  ~Response();
  int take_fd();
};

struct Client::Impl {
  Mutex mu;  // one request at a time on the socket
  // Lease ids released and not yet sent (ReleaseMode::kDeferred): the next request carries
  // them (RequestMsg.releases).  A leaf lock, taken with or without mu, so that a release
  // never waits for another thread's round trip.
  Mutex release_mu;
  std::vector<uint64_t> pending_releases GUARDED_BY(release_mu);
  ReleaseMode release_mode = ReleaseMode::kDeferred;  // constant after connect
  bool daemon_carries_releases = false;               // HelloResp.carried_releases
  int fd = -1;
  std::string socket_path;
  uint64_t next_id = 1;
  uint64_t session_id = 0;
  BlockKey instance;
  uint64_t max_message_bytes = 0;
  uint32_t busy_poll_us = 0;  // ClientOptions::busy_poll_us
  std::map<uint32_t, uint64_t> arena_sizes;
  std::map<uint32_t, std::shared_ptr<ArenaMapping>> arenas GUARDED_BY(mu);
  int device = -1;  // ClientOptions::device, in this process's numbering
  std::string gpu_backend;
  // The daemon's GPU devices with a pool (HelloResp.gpu_pools): its index for each and the
  // device's UUID (none from a daemon older than device identity).  Constant after connect.
  struct DaemonDevice {
    int index = 0;
    std::optional<gpu::DeviceUuid> uuid;
  };
  std::vector<DaemonDevice> daemon_devices;
  // This process's device numbering against the daemon's (libclient/src/devices.cpp), worked
  // out at the first need: listing CUDA devices initialises the driver, which a client that
  // never asks for GPU memory should not pay for.
  struct DeviceMap {
    std::map<int, int> to_daemon;  // this process's index -> the daemon's (devices with a pool)
    std::map<int, int> to_client;  // the reverse
  };
  const DeviceMap& device_map();
  // A device for a request (-1: ClientOptions::device's, else the first pool this process
  // sees) as the daemon numbers it; -2 when this process sees no pool of it (puts then take
  // the host path).  A put that names no device sends -1 untranslated.
  int daemon_device(int client_device);
  // A device in a reply in this process's numbering; -1 when this process does not see it.
  int client_device(int daemon_device);
  // A GPU request's device, or kInvalidArgument naming the devices this process could ask for.
  Result<int> gpu_request_device(int client_device);
  std::map<uint32_t, std::shared_ptr<ArenaMapping>> gpu_pools GUARDED_BY(mu);
  std::once_flag device_map_once;
  DeviceMap device_map_;         // written once, under device_map_once
  std::byte* staging = nullptr;  // read-write mapping of this connection's staging memfd
  uint64_t staging_bytes = 0;
  // Maps the staging memfd `fd` (closed here) read-write.
  Status map_staging(int fd, uint64_t bytes) REQUIRES(mu);
  // This connection's device staging, by the daemon's device index (writable imports).
  std::map<int, std::unique_ptr<gpu::ImportedPool>> device_staging GUARDED_BY(mu);
  // Bytes read and not yet consumed (guarded by mu): a reply, header and body, usually comes
  // in with one recvmsg.  Descriptors that arrive wait in rfds for the reply that ends the
  // call (the daemon sends them with a final reply only, never with a progress frame).
  std::vector<std::byte> rbuf;
  size_t rbeg = 0, rend = 0;
  std::vector<int> rfds;
  // The connection's shared-memory request channel (ClientOptions::request_channel), or null.
  std::unique_ptr<Channel> channel GUARDED_BY(mu);

  // The shared lookup index (lookup.cpp).  index_mu is taken after mu, never before it, and
  // never held across a call to the daemon.
  bool lookup_index = true;  // ClientOptions::lookup_index; constant after connect
  Mutex index_mu;
  struct NsIndex {
    bool usable = false;  // false: this namespace's lookups go to the daemon
    uint32_t ns_id = 0;
    uint32_t domain = 0;
    bool complete = true;  // the index lists every tier the daemon would ask
  };
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, NsIndex, StringHash, std::equal_to<>> ns_index
      GUARDED_BY(index_mu);
  std::map<uint32_t, std::shared_ptr<const LookupIndexView>> index_views GUARDED_BY(index_mu);
  // The daemon's liveness page (with the first index mapped): a daemon that died leaves its
  // indexes unretired, and this says so.
  std::shared_ptr<const LivenessView> liveness GUARDED_BY(index_mu);
  // The index's answer, or nullopt when the daemon must answer (no index for the namespace,
  // a transport failure, keys past the prefix of a namespace that uses the remote tier).
  std::optional<uint32_t> index_lookup(std::string_view ns, std::span<const BlockKey> keys,
                                       const LookupOptions& options) EXCLUDES(mu, index_mu);
  // ResolveReq for `ns`, recorded in ns_index; false when the connection failed.
  bool resolve_for_index(std::string_view ns) EXCLUDES(mu, index_mu);
  // MapIndexReq for `domain`, recorded in index_views (replacing `stale`); false on failure.
  bool map_index(uint32_t domain) EXCLUDES(mu, index_mu);

  ~Impl();
  // Sends one request and waits for its reply; an error reply becomes its Status.
  Result<std::unique_ptr<Response>> call(flatbuffers::FlatBufferBuilder& fbb, wire::Request type,
                                         flatbuffers::Offset<void> body) REQUIRES(mu);
  // Like call(), for requests the daemon answers with ProgressResp frames before the reply:
  // each one is passed to `progress`.
  Result<std::unique_ptr<Response>> call(
      flatbuffers::FlatBufferBuilder& fbb, wire::Request type, flatbuffers::Offset<void> body,
      const std::function<void(uint64_t done, uint64_t total)>& progress) REQUIRES(mu);
  Result<std::unique_ptr<Response>> receive(uint64_t id) REQUIRES(mu);  // one reply frame
  // Gives `ids` (and the pending releases) back to the daemon: a one-way ReleaseReq on the
  // socket, no reply awaited.  A dead connection has released them already.
  Status post_releases(std::vector<uint64_t> ids) REQUIRES(mu);
  // Queues lease ids for release per release_mode (Lease::release()).
  Status release_leases(std::vector<uint64_t> ids) EXCLUDES(mu);
  // Sends request `id` through the channel and waits for its reply there; a null Response
  // when the daemon sends the reply on the socket instead.  Requires mu.
  Result<std::unique_ptr<Response>> call_on_channel(uint64_t id, std::span<const std::byte> body)
      REQUIRES(mu);
  // Asks the daemon for a request channel; an error when it offers none (the connection
  // keeps using the socket).
  Status open_channel() REQUIRES(mu);
  // Turns a reply (msg set when its body verified, else null) into itself or its Status.
  static Result<std::unique_ptr<Response>> finish(std::unique_ptr<Response> resp, uint64_t id);
  // One recvmsg into rbuf (moving unconsumed bytes to its front first); yields the CPU when a
  // MSG_DONTWAIT read finds nothing.  On failure the connection is closed.
  Status read_some(int flags) REQUIRES(mu);
  // Drops doorbell frames at the front of rbuf.
  void drop_doorbells();
  // The connection is unusable (a transport failure left the stream unframed): closes it.
  Status fail_connection(Status st) REQUIRES(mu);
  Result<std::shared_ptr<ArenaMapping>> arena(uint32_t id) REQUIRES(mu);
  // A GPU tier pool, imported once per process (tiers/gpu/device_backend.h import_pool).
  Result<std::shared_ptr<ArenaMapping>> gpu_pool(uint32_t id) REQUIRES(mu);
};

// Turns LeasedBlock replies into a Lease (a friend of Lease), or gives the granted leases
// back and fails.
class LeaseBuilder {
 public:
  static Result<Lease> build(const std::shared_ptr<Client::Impl>& impl,
                             const std::vector<const wire::LeasedBlock*>& blocks)
      REQUIRES(impl->mu);
};

// The layout a put's tensors are staged in: in order, 64-byte aligned; a tensor's bytes from
// `data` or its segments (which must add up to its shape).  libclient/src/put_batch.cpp.
Result<BlockLayout> staged_layout(std::span<const TensorIn> tensors);

}  // namespace kvtier
