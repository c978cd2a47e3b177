// libkvtier internals: one connection to the daemon and the process-wide arena mappings.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <functional>

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "common/channel.h"
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
  int fd = -1;
  std::string socket_path;
  uint64_t next_id = 1;
  uint64_t session_id = 0;
  BlockKey instance;
  uint64_t max_message_bytes = 0;
  uint32_t busy_poll_us = 0;  // ClientOptions::busy_poll_us
  std::map<uint32_t, uint64_t> arena_sizes;
  std::map<uint32_t, std::shared_ptr<ArenaMapping>> arenas GUARDED_BY(mu);
  int device = -1;  // ClientOptions::device
  std::string gpu_backend;
  std::vector<int> gpu_devices;
  std::map<uint32_t, std::shared_ptr<ArenaMapping>> gpu_pools GUARDED_BY(mu);
  std::byte* staging = nullptr;  // read-write mapping of this connection's staging memfd
  uint64_t staging_bytes = 0;
  // Bytes read and not yet consumed (guarded by mu): a reply, header and body, usually comes
  // in with one recvmsg.  Descriptors that arrive wait in rfds for the reply that ends the
  // call (the daemon sends them with a final reply only, never with a progress frame).
  std::vector<std::byte> rbuf;
  size_t rbeg = 0, rend = 0;
  std::vector<int> rfds;
  // The connection's shared-memory request channel (ClientOptions::request_channel), or null.
  std::unique_ptr<Channel> channel GUARDED_BY(mu);

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

}  // namespace kvtier
