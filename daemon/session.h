// One client connection, served by one coroutine: read a frame, verify it, handle it, reply.
// Frames come from the socket or, once the client opened one, from the connection's
// shared-memory request channel (session_channel.cpp).  Requests on a connection are handled
// in order; the coroutine runs on its io thread's io_context, so nothing else touches its
// socket, channel, staging area or state concurrently.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <flatbuffers/flatbuffers.h>

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <span>
#include <vector>

#include "common/channel.h"
#include "common/protocol_generated.h"
#include "kvtier/status.h"
#include "engine/engine.h"
#include "daemon/peer.h"
#include "daemon/staging.h"
#include "tiers/gpu/pool_allocator.h"

namespace kvtier {

class Server;

// A LeasedBlock for a reply (the block's layout stays valid while the lease is held).
flatbuffers::Offset<wire::LeasedBlock> leased_block(flatbuffers::FlatBufferBuilder& fbb,
                                                    const LeaseGrant& g);
// A request's keys: kInvalidArgument when there are none, kLimit past 65536.
Result<std::vector<BlockKey>> request_keys(const flatbuffers::Vector<const wire::Key128*>* keys);
// ok when `device` (-1: any) has a GPU tier; else an error naming the devices that do.
Status check_gpu_device(const Engine& engine, int device);
// A GPU tier's pool for HelloResp / MapGpuPoolResp (without the descriptor).
flatbuffers::Offset<wire::GpuPoolInfo> gpu_pool_info(flatbuffers::FlatBufferBuilder& fbb,
                                                     const GpuTier& tier,
                                                     const gpu::PoolExport* handle = nullptr);

// A reply under construction: a body in the builder, or an error status; descriptors to pass.
struct Reply {
  Reply() = default;
  Reply& operator=(Reply&&) = default;
  flatbuffers::FlatBufferBuilder fbb{1024};
  wire::Response type = wire::Response::NONE;
  flatbuffers::Offset<void> body;
  Status status;
  std::vector<int> fds;  // sent with the reply, then closed

  template <typename T>
  void set(wire::Response t, flatbuffers::Offset<T> b) {
    type = t;
    body = b.Union();
  }
  void fail(Status s) { status = std::move(s); }
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using Socket = boost::asio::local::stream_protocol::socket;
  // The socket belongs to one io_context, run by one thread: the session's coroutine, its
  // socket and its staging area are only ever touched from that thread.
  Session(Server& server, Socket socket, PeerInfo peer);
  ~Session();

  // The connection's coroutine; `self` (this session) keeps it alive until the client is gone.
  static boost::asio::awaitable<void> run(std::shared_ptr<Session> self);
  boost::asio::any_io_executor executor() { return socket_.get_executor(); }
  // Drain: stop reading after the request in flight.  Must run on the session's executor.
  void stop_reading();
  uint64_t id() const { return id_; }
  const PeerInfo& peer() const { return peer_; }

 private:
  boost::asio::awaitable<void> serve();  // the request loop; returns when the client is gone
  // Verifies one request body, handles it and sends the reply: false when the client is gone.
  boost::asio::awaitable<bool> answer(std::span<const std::byte> body);
  boost::asio::awaitable<void> handle(const wire::RequestMsg& msg, Reply& reply);
  void on_hello(const wire::HelloReq& req, Reply& r);
  void on_map_arena(const wire::MapArenaReq& req, Reply& r);
  void on_map_gpu_pool(const wire::MapGpuPoolReq& req, Reply& r);
  boost::asio::awaitable<void> on_lookup(const wire::LookupReq& req, Reply& r);
  boost::asio::awaitable<void> on_put_begin(const wire::PutBeginReq& req, Reply& r);
  boost::asio::awaitable<void> on_seal(const wire::SealReq& req, Reply& r);
  // Batched puts, from host or device staging (handlers_put.cpp).
  boost::asio::awaitable<void> on_put_batch(const wire::PutBatchReq& req, Reply& r);
  boost::asio::awaitable<void> on_seal_batch(const wire::SealBatchReq& req, Reply& r);
  // Seals pending put `put_id` from wherever it was staged, and frees its staging range.
  boost::asio::awaitable<Result<uint64_t>> seal_staged(uint64_t put_id);
  void on_abort(const wire::AbortReq& req, Reply& r);
  boost::asio::awaitable<void> on_get(const wire::GetReq& req, Reply& r);
  boost::asio::awaitable<void> on_get_fusion(const wire::GetFusionReq& req, Reply& r);
  void on_add_embeddings(const wire::AddEmbeddingsReq& req, Reply& r);
  boost::asio::awaitable<void> on_search(const wire::SearchReq& req, Reply& r);
  void on_release(const wire::ReleaseReq& req, Reply& r);
  void on_remove(const wire::RemoveReq& req, Reply& r);
  void on_admin(const wire::RequestMsg& msg, Reply& r);
  void on_open_channel(Reply& r);
  // The shared lookup index (handlers_index.cpp).
  void on_resolve(const wire::ResolveReq& req, Reply& r);
  void on_map_index(const wire::MapIndexReq& req, Reply& r);
  // Pins (handlers_pin.cpp).
  boost::asio::awaitable<void> on_pin(const wire::PinReq& req, Reply& r);
  void on_unpin(const wire::UnpinReq& req, Reply& r);
  // The request channel (session_channel.cpp).  kRequest: a request body copied into cbuf_;
  // kSocket: the client's next request comes on the socket.
  enum class Taken { kNone, kRequest, kSocket };
  Taken take_channel_request();
  // Polls the channel for daemon.busy_poll_us; true with a request in cbuf_.  False: read the
  // socket next (daemon_sleeping is set unless a kSocket marker ended the poll).
  boost::asio::awaitable<bool> poll_channel();
  // Answers channel request `seq`: `body` into the reply area, or, when empty, a marker that
  // the reply comes on the socket.  Rings the client when it sleeps; false when it is gone.
  boost::asio::awaitable<bool> publish_reply(uint64_t seq, std::span<const std::byte> body);
  // compact / verify: progress frames while the job runs on its own thread, then the report.
  boost::asio::awaitable<void> on_disk_job(const wire::RequestMsg& msg, Reply& r);
  boost::asio::awaitable<bool> send(uint64_t request_id, Reply& reply);
  boost::asio::awaitable<bool> send_progress(uint64_t request_id, uint64_t done, uint64_t total);
  // Until at least `need` bytes are buffered in rbuf_[0, rend_): false on EOF or error.
  boost::asio::awaitable<bool> fill(size_t need);
  // Writes every byte of `bufs` (a frame); false when the client is gone.
  boost::asio::awaitable<bool> write_all(std::array<boost::asio::const_buffer, 2> bufs);

  Server& server_;
  Socket socket_;
  const PeerInfo peer_;
  const uint64_t id_;
  std::unique_ptr<Staging> staging_;  // created at the first put
  // Where each pending put's bytes are staged, by put id (freed at seal or abort).
  struct Staged {
    uint64_t offset = 0;
    uint64_t bytes = 0;
    int device = -1;  // -1: the host staging; else the device staging of that device
  };
  std::unordered_map<uint64_t, Staged> staged_;
  void free_staged(const Staged& s);
  // Device staging (docs/gpu.md, "Device puts"): per device, made at the connection's first
  // put from that device's memory and exported writable to this client alone.
  struct DeviceStaging {
    explicit DeviceStaging(std::unique_ptr<gpu::DevicePool> p)
        : pool(std::move(p)), space(pool->size()) {}
    std::unique_ptr<gpu::DevicePool> pool;
    gpu::PoolAllocator space;
  };
  std::map<int, std::unique_ptr<DeviceStaging>> device_staging_;
  bool staging_sent_ = false;
  bool reading_ = true;
  // What has been read and not yet handled: frames are read with as few recv calls as the
  // client's writes allow (usually one per request), not a header and then a body.
  std::vector<std::byte> rbuf_;
  size_t rend_ = 0;  // the current frame always starts at rbuf_[0]
  // The request channel, once the client opened one.
  std::unique_ptr<Channel> channel_;
  uint64_t channel_seq_ = 0;               // the last request_seq taken from the channel
  uint64_t socket_seq_ = 0;                // the highest request id answered from the socket
  std::optional<uint64_t> channel_reply_;  // set while a channel request is being answered
  std::vector<std::byte> cbuf_;            // the channel request being handled (a copy)
};

}  // namespace kvtier
