#include "daemon/session.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <spdlog/spdlog.h>

#include "common/frame.h"
#include "common/wire.h"
#include "daemon/admin.h"
#include "engine/block_codec.h"
#include "daemon/server.h"

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

namespace kvtier {
Session::Session(Server& server, Socket socket, PeerInfo peer)
    : server_(server),
      socket_(std::move(socket)),
      peer_(std::move(peer)),
      id_(server.engine().open_session(peer_)) {}

Session::~Session() = default;

void Session::stop_reading() {
  reading_ = false;
  boost::system::error_code ec;
  // The read side only: a reply being written still goes out.
  socket_.shutdown(Socket::shutdown_receive, ec);
}

awaitable<void> Session::run(std::shared_ptr<Session> self) {
  const uint64_t id = self->id_;
  const PeerInfo& peer = self->peer_;
  spdlog::debug("session {}: pid {} uid {} ({}) connected", id, peer.pid, peer.uid, peer.comm);
  try {
    co_await self->serve();
  } catch (const std::exception& e) {
    spdlog::error("session {}: closing after an unexpected error: {}", id, e.what());
  }
  // Whatever ended the loop (EOF, reset, drain, error), the client's leases and unsealed puts
  // go back now.
  boost::system::error_code ignored;
  self->socket_.close(ignored);
  self->server_.engine().close_session(id);
  spdlog::debug("session {}: closed", id);
  self->server_.on_session_end(id);
}

namespace {

// Bytes kept buffered per connection between requests; a bigger request's buffer is released
// once it is handled.
constexpr size_t kReadBufferBytes = 64 * 1024;

// Nanoseconds since `start`, for the request latency histograms (Metrics::observe).
uint64_t since_ns(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

bool would_block(const boost::system::error_code& ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}

}  // namespace

awaitable<bool> Session::fill(size_t need) {
  while (rend_ < need) {
    if (rbuf_.size() < std::max(need, kReadBufferBytes))
      rbuf_.resize(std::max(need, kReadBufferBytes));
    boost::system::error_code ec;
    // The socket is non-blocking: a read that finds nothing says so instead of waiting, and
    // one that finds bytes completes here, without a trip through the io_context's queue.
    const size_t n =
        socket_.read_some(asio::buffer(rbuf_.data() + rend_, rbuf_.size() - rend_), ec);
    if (!ec) {
      rend_ += n;
    } else if (would_block(ec)) {
      co_await socket_.async_wait(Socket::wait_read, asio::redirect_error(use_awaitable, ec));
      if (ec) co_return false;
    } else if (ec != asio::error::interrupted) {
      co_return false;  // EOF, reset or shutdown: the client is gone
    }
  }
  co_return true;
}

awaitable<bool> Session::write_all(std::array<asio::const_buffer, 2> bufs) {
  boost::system::error_code ec;
  size_t n = socket_.write_some(bufs, ec);
  if (ec && !would_block(ec) && ec != asio::error::interrupted) co_return false;
  if (ec) n = 0;
  // Usually the whole frame went out above; the rest (a full socket buffer) waits for room.
  for (auto& b : bufs) {
    const size_t used = std::min(n, b.size());
    b += used;
    n -= used;
  }
  if (bufs[0].size() + bufs[1].size() == 0) co_return true;
  co_await asio::async_write(socket_, bufs, asio::redirect_error(use_awaitable, ec));
  co_return !ec;
}

awaitable<void> Session::serve() {
  const uint64_t max_len = server_.config().daemon.max_message_bytes;
  {
    boost::system::error_code ec;
    socket_.non_blocking(true, ec);
    if (ec) {
      spdlog::error("session {}: cannot make the socket non-blocking: {}", id_, ec.message());
      co_return;
    }
  }
  while (reading_) {
    if (channel_ && rend_ < kFrameHeaderBytes && co_await poll_channel()) {
      bump(server_.metrics().channel_requests);
      channel_reply_ = channel_seq_;
      if (!co_await answer(cbuf_)) break;
      continue;
    }
    if (!co_await fill(kFrameHeaderBytes)) break;
    if (channel_) channel_->control().daemon_sleeping.store(0, std::memory_order_relaxed);
    std::array<std::byte, kFrameHeaderBytes> header;
    std::memcpy(header.data(), rbuf_.data(), kFrameHeaderBytes);
    auto h = decode_header(header, max_len);
    if (!h || h->kind == FrameKind::kResponse) {
      // A bad header leaves the stream unframed: answer once, then close.
      bump(server_.metrics().protocol_errors);
      Reply r;
      r.fail(h ? error(Errc::kProtocol, "expected a request frame") : h.status());
      spdlog::info("session {}: closing on bad frame: {}", id_, r.status.to_string());
      co_await send(0, r);
      break;
    }
    // A doorbell only wakes the loop: the request is in the channel.
    const size_t used = kFrameHeaderBytes + h->length;
    if (h->kind == FrameKind::kRequest) {
      if (!co_await fill(used)) break;
      if (!co_await answer({rbuf_.data() + kFrameHeaderBytes, h->length})) break;
    }
    // The request's bytes are done with.  What follows (a pipelined request) moves to the
    // front at once, so that every frame, header and body, starts at the buffer's
    // malloc-aligned start: FlatBuffers reads scalars in place.
    std::memmove(rbuf_.data(), rbuf_.data() + used, rend_ - used);
    rend_ -= used;
    if (rbuf_.size() > kReadBufferBytes && rend_ == 0) {
      rbuf_.resize(kReadBufferBytes);
      rbuf_.shrink_to_fit();
    }
  }
}

awaitable<bool> Session::answer(std::span<const std::byte> body) {
  Reply r;
  uint64_t request_id = 0;
  bool oneway = false;
  if (const wire::RequestMsg* msg = wire_util::verify_request(body)) {
    request_id = msg->id();
    if (!channel_reply_) socket_seq_ = std::max(socket_seq_, request_id);
    // Releases that rode on this request: given back first (the body may need the room).
    if (const auto* rel = msg->releases(); rel != nullptr && rel->size() > 0) {
      std::vector<uint64_t> ids = wire_util::scalars(rel);
      server_.engine().release(id_, ids);
      bump(server_.metrics().carried_releases, ids.size());
    }
    oneway = msg->oneway() && !channel_reply_;
    try {
      co_await handle(*msg, r);
    } catch (const std::exception& e) {
      // A bug or resource exhaustion in one request must not take the connection down.
      spdlog::error("session {}: request failed: {}", id_, e.what());
      r = Reply();
      r.fail(error(Errc::kInternal, e.what()));
    }
  } else {
    bump(server_.metrics().protocol_errors);
    r.fail(error(Errc::kProtocol, "message body failed schema verification"));
  }
  if (oneway) {
    // Nobody waits for this reply: counted, a failure logged, nothing sent.
    bump(server_.metrics().requests);
    bump(server_.metrics().oneway_requests);
    if (!r.status.is_ok()) {
      bump(server_.metrics().errors);
      spdlog::info("session {}: one-way request {} failed: {}", id_, request_id,
                   r.status.to_string());
    }
    for (int fd : r.fds) ::close(fd);
    co_return true;
  }
  co_return co_await send(request_id, r);
}

awaitable<bool> Session::send(uint64_t request_id, Reply& r) {
  bump(server_.metrics().requests);
  auto& fbb = r.fbb;
  flatbuffers::Offset<wire::ResponseMsg> msg;
  if (r.status.is_ok()) {
    msg = wire::CreateResponseMsg(fbb, request_id, 0, 0, r.type, r.body);
  } else {
    bump(server_.metrics().errors);
    for (int fd : r.fds) ::close(fd);
    r.fds.clear();
    msg = wire::CreateResponseMsg(fbb, request_id, static_cast<uint16_t>(r.status.code()),
                                  fbb.CreateString(r.status.message()));
  }
  fbb.Finish(msg);
  auto body = wire_util::bytes_of(fbb);
  if (channel_reply_) {
    // A channel request's reply goes back through the channel unless it carries descriptors,
    // does not fit, or is a progress frame (more frames follow): then a marker sends the
    // client to the socket for this request.
    const uint64_t seq = *std::exchange(channel_reply_, std::nullopt);
    const bool fits = r.fds.empty() && body.size() <= channel_->reply_capacity() &&
                      r.type != wire::Response::ProgressResp;
    if (fits) co_return co_await publish_reply(seq, body);
    if (!co_await publish_reply(seq, {})) co_return false;
  }
  auto header =
      encode_header({kProtocolVersion, FrameKind::kResponse, static_cast<uint32_t>(body.size())});
  boost::system::error_code ec;
  size_t sent = 0;
  if (!r.fds.empty()) {
    // Asio cannot send ancillary data: the first bytes go out with sendmsg, carrying the fds.
    for (;;) {
      iovec iov[2] = {{header.data(), header.size()},
                      {const_cast<std::byte*>(body.data()), body.size()}};
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
      msghdr m{};
      m.msg_iov = iov;
      m.msg_iovlen = 2;
      m.msg_control = cbuf;
      m.msg_controllen = CMSG_SPACE(sizeof(int) * r.fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * r.fds.size());
      std::memcpy(CMSG_DATA(c), r.fds.data(), sizeof(int) * r.fds.size());
      ssize_t n = ::sendmsg(socket_.native_handle(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        sent = static_cast<size_t>(n);
        break;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        sent = SIZE_MAX;
        break;
      }
      co_await socket_.async_wait(Socket::wait_write, asio::redirect_error(use_awaitable, ec));
      if (ec) break;
    }
    for (int fd : r.fds) ::close(fd);
    r.fds.clear();
    if (ec || sent == SIZE_MAX) co_return false;
  }
  std::array<asio::const_buffer, 2> bufs;
  if (sent < header.size()) {
    bufs = {asio::buffer(header.data() + sent, header.size() - sent),
            asio::buffer(body.data(), body.size())};
  } else {
    size_t off = sent - header.size();
    bufs = {asio::const_buffer(), asio::buffer(body.data() + off, body.size() - off)};
  }
  co_return co_await write_all(bufs);
}

awaitable<void> Session::handle(const wire::RequestMsg& msg, Reply& r) {
  // Most requests complete without suspending; get (disk promotion), seal (persist) and the
  // disk jobs may wait for the disk tier.  The data-plane requests are timed here, from the
  // decoded request to the reply built (kvtier_request_duration_seconds; two clock reads and
  // relaxed atomic adds).
  using R = wire::Request;
  // The verifier accepts a union type whose body table is absent (an absent table is valid
  // FlatBuffers); every handler below, and the admin table, takes its body as present.
  if (msg.body_type() != R::NONE && msg.body() == nullptr) {
    bump(server_.metrics().protocol_errors);
    const char* name = wire::EnumNameRequest(msg.body_type());
    r.fail(error(Errc::kProtocol,
                 std::string("request ") + (*name ? name : "of unknown type") + " has no body"));
    co_return;
  }
  switch (msg.body_type()) {
    case R::HelloReq:
      on_hello(*msg.body_as_HelloReq(), r);
      co_return;
    case R::MapArenaReq:
      on_map_arena(*msg.body_as_MapArenaReq(), r);
      co_return;
    case R::MapGpuPoolReq:
      on_map_gpu_pool(*msg.body_as_MapGpuPoolReq(), r);
      co_return;
    case R::LookupReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_lookup(*msg.body_as_LookupReq(), r);
      server_.metrics().observe(Metrics::Timed::kLookup, since_ns(start));
      co_return;
    }
    case R::PutBeginReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_put_begin(*msg.body_as_PutBeginReq(), r);
      server_.metrics().observe(Metrics::Timed::kPutBegin, since_ns(start));
      co_return;
    }
    case R::GetFusionReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_get_fusion(*msg.body_as_GetFusionReq(), r);
      server_.metrics().observe(Metrics::Timed::kGetFusion, since_ns(start));
      co_return;
    }
    case R::AddEmbeddingsReq:
      on_add_embeddings(*msg.body_as_AddEmbeddingsReq(), r);
      co_return;
    case R::SearchReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_search(*msg.body_as_SearchReq(), r);
      server_.metrics().observe(Metrics::Timed::kSearch, since_ns(start));
      co_return;
    }
    case R::SealReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_seal(*msg.body_as_SealReq(), r);
      server_.metrics().observe(Metrics::Timed::kSeal, since_ns(start));
      co_return;
    }
    case R::AbortReq:
      on_abort(*msg.body_as_AbortReq(), r);
      co_return;
    case R::PutBatchReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_put_batch(*msg.body_as_PutBatchReq(), r);
      server_.metrics().observe(Metrics::Timed::kPutBatch, since_ns(start));
      co_return;
    }
    case R::SealBatchReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_seal_batch(*msg.body_as_SealBatchReq(), r);
      server_.metrics().observe(Metrics::Timed::kSealBatch, since_ns(start));
      co_return;
    }
    case R::GetReq: {
      const auto start = std::chrono::steady_clock::now();
      co_await on_get(*msg.body_as_GetReq(), r);
      server_.metrics().observe(Metrics::Timed::kGet, since_ns(start));
      co_return;
    }
    case R::ReleaseReq:
      on_release(*msg.body_as_ReleaseReq(), r);
      co_return;
    case R::RemoveReq:
      on_remove(*msg.body_as_RemoveReq(), r);
      co_return;
    case R::OpenChannelReq:
      on_open_channel(r);
      co_return;
    case R::ResolveReq:
      on_resolve(*msg.body_as_ResolveReq(), r);
      co_return;
    case R::MapIndexReq:
      on_map_index(*msg.body_as_MapIndexReq(), r);
      co_return;
    case R::PinReq:
      co_await on_pin(*msg.body_as_PinReq(), r);
      co_return;
    case R::UnpinReq:
      on_unpin(*msg.body_as_UnpinReq(), r);
      co_return;
    case R::CompactReq:
    case R::VerifyReq:
      co_await on_disk_job(msg, r);
      co_return;
    case R::StatsReq:
    case R::EvictReq:
    case R::ListReq:
    case R::ClientsReq:
    case R::HealthReq:
    case R::ConfigReq:
      on_admin(msg, r);
      co_return;
    case R::NONE:
      break;
  }
  r.fail(error(Errc::kProtocol, "unknown or missing request type"));
}

void Session::on_admin(const wire::RequestMsg& msg, Reply& r) {
  handle_admin(server_, peer_, msg, r);
}

}  // namespace kvtier
