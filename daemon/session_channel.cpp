// The shared-memory request channel of a Session (common/channel.h, docs/protocol.md).
//
// While the channel is open, the session's coroutine polls the channel's request word for
// daemon.busy_poll_us after each request, yielding the CPU and handing the io thread back to
// the io_context between looks (post), so other sessions on the thread keep running.  Then it sets
// daemon_sleeping and waits on the socket, where the client rings a doorbell.  The flag is
// set and the request word read again in that order (both seq_cst), and the client publishes
// its request and then reads the flag (both seq_cst): one of the two sides always sees the
// other, so no request is left unseen.
#include <chrono>
#include <cstring>
#include <thread>

#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include "common/frame.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace asio = boost::asio;
using asio::awaitable;

namespace kvtier {
namespace {

// Area sizes: a search or lookup request and its reply fit with room to spare; bigger frames
// take the socket (the channel carries kChannelOnSocket instead).
constexpr uint32_t kChannelRequestBytes = 64 * 1024;
constexpr uint32_t kChannelReplyBytes = 256 * 1024;

}  // namespace

void Session::on_open_channel(Reply& r) {
  const auto& d = server_.config().daemon;
  if (!d.request_channel)
    return r.fail(error(Errc::kUnavailable, "request channels are off (daemon.request_channel)"));
  if (d.busy_poll_us == 0)
    return r.fail(error(Errc::kUnavailable,
                        "the daemon does not poll (daemon.busy_poll_us = 0): use the socket"));
  if (channel_) return r.fail(error(Errc::kAlreadyExists, "this connection has a channel"));
  // The request area never exceeds what the socket would accept.
  const uint32_t request_bytes = static_cast<uint32_t>(
      std::min<uint64_t>(kChannelRequestBytes, d.max_message_bytes / 64 * 64));
  auto channel = Channel::create(request_bytes, kChannelReplyBytes);
  if (!channel) return r.fail(channel.status());
  int fd = ::dup((*channel)->fd());
  if (fd < 0) return r.fail(error(Errc::kIo, std::string("dup: ") + std::strerror(errno)));
  channel_ = std::move(channel).value();
  bump(server_.metrics().channels_opened);
  server_.engine().mark_channel(id_);
  r.fds.push_back(fd);
  r.set(wire::Response::OpenChannelResp,
        wire::CreateOpenChannelResp(r.fbb, kChannelVersion, channel_->request_capacity(),
                                    channel_->reply_capacity()));
  spdlog::debug("session {}: request channel open ({} + {} bytes)", id_, request_bytes,
                kChannelReplyBytes);
}

Session::Taken Session::take_channel_request() {
  ChannelControl& c = channel_->control();
  const uint64_t seq = c.request_seq.load(std::memory_order_seq_cst);
  if (seq == channel_seq_) return Taken::kNone;
  channel_seq_ = seq;
  // Read once: the client may rewrite the mapping at any time, and only hurts itself.
  const uint32_t len = c.request_len.load(std::memory_order_relaxed);
  if (len == kChannelOnSocket) {
    // The request comes on the socket; already handled when its id was seen there first.
    return seq <= socket_seq_ ? Taken::kNone : Taken::kSocket;
  }
  if (len > channel_->request_capacity()) {
    cbuf_.clear();  // fails verification: an error reply, the connection stays usable
  } else {
    const auto area = channel_->request_area();
    cbuf_.assign(area.begin(), area.begin() + len);
  }
  return Taken::kRequest;
}

awaitable<bool> Session::poll_channel() {
  ChannelControl& c = channel_->control();
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::microseconds(server_.config().daemon.busy_poll_us);
  for (uint32_t spins = 1; reading_; ++spins) {
    if (Taken t = take_channel_request(); t != Taken::kNone) co_return t == Taken::kRequest;
    if (spins % 16 == 0 && std::chrono::steady_clock::now() >= until) break;
    // Whatever else can run on this CPU goes first: the client itself, when both share one
    // (io_context::poll() keeps running a handler that re-posts itself, so run_io's own
    // yield would never come); then every other connection of this io thread.
    std::this_thread::yield();
    co_await asio::post(socket_.get_executor(), asio::use_awaitable);
  }
  c.daemon_sleeping.store(1, std::memory_order_seq_cst);
  const Taken t = take_channel_request();
  if (t != Taken::kNone) c.daemon_sleeping.store(0, std::memory_order_relaxed);
  co_return t == Taken::kRequest;
}

awaitable<bool> Session::publish_reply(uint64_t seq, std::span<const std::byte> body) {
  ChannelControl& c = channel_->control();
  if (!body.empty()) std::memcpy(channel_->reply_area().data(), body.data(), body.size());
  c.reply_len.store(body.empty() ? kChannelOnSocket : static_cast<uint32_t>(body.size()),
                    std::memory_order_relaxed);
  c.reply_seq.store(seq, std::memory_order_seq_cst);
  if (c.client_sleeping.exchange(0, std::memory_order_seq_cst) == 0) co_return true;
  const auto ring = encode_header({kProtocolVersion, FrameKind::kDoorbell, 0});
  co_return co_await write_all({asio::buffer(ring), asio::const_buffer()});
}

}  // namespace kvtier
