// The client's side of the shared-memory request channel (common/channel.h).
//
// The request is published (request_seq, seq_cst) before daemon_sleeping is read, and the
// client sets client_sleeping before it reads reply_seq again and sleeps on the socket: with
// the daemon's mirror-image order, one side always sees the other, so no wake-up is lost.
// Doorbells that turn out to be unneeded are skipped wherever frames are read.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/frame.h"
#include "common/wire.h"
#include "libclient/src/impl.h"

namespace kvtier {

Status Client::Impl::open_channel() {
  flatbuffers::FlatBufferBuilder fbb;
  auto resp = call(fbb, wire::Request::OpenChannelReq, wire::CreateOpenChannelReq(fbb).Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_OpenChannelResp();
  int cfd = (*resp)->take_fd();
  if (body == nullptr || cfd < 0) {
    if (cfd >= 0) ::close(cfd);
    return error(Errc::kProtocol, "channel reply without a descriptor");
  }
  auto mapped = Channel::map(cfd);
  if (!mapped) return mapped.status();
  if (body->version() != kChannelVersion ||
      (*mapped)->request_capacity() != body->request_bytes() ||
      (*mapped)->reply_capacity() != body->reply_bytes())
    return error(Errc::kProtocol, "channel reply does not match its memfd");
  channel = std::move(mapped).value();
  return {};
}

void Client::Impl::drop_doorbells() {
  while (rend - rbeg >= kFrameHeaderBytes) {
    auto h = decode_header(
        std::span<const std::byte, kFrameHeaderBytes>(rbuf.data() + rbeg, kFrameHeaderBytes), 0);
    if (!h || h->kind != FrameKind::kDoorbell) break;  // receive() deals with the rest
    rbeg += kFrameHeaderBytes;
  }
  if (rbeg == rend) rbeg = rend = 0;
}

Result<std::unique_ptr<Response>> Client::Impl::call_on_channel(uint64_t id,
                                                                std::span<const std::byte> body) {
  ChannelControl& c = channel->control();
  std::memcpy(channel->request_area().data(), body.data(), body.size());
  c.request_len.store(static_cast<uint32_t>(body.size()), std::memory_order_relaxed);
  c.request_seq.store(id, std::memory_order_seq_cst);
  if (c.daemon_sleeping.exchange(0, std::memory_order_seq_cst) != 0) {
    const auto ring = encode_header({kProtocolVersion, FrameKind::kDoorbell, 0});
    if (Status st = send_all(fd, ring, {}); !st) return fail_connection(st);
  }
  auto take = [&]() -> Result<std::unique_ptr<Response>> {
    mu.assert_held();  // call_on_channel's
    const uint32_t len = c.reply_len.load(std::memory_order_relaxed);
    if (len == kChannelOnSocket) return std::unique_ptr<Response>();
    if (len > channel->reply_capacity())
      return fail_connection(error(Errc::kProtocol, "channel reply longer than its area"));
    auto resp = std::make_unique<Response>();
    const auto area = channel->reply_area();
    resp->body.assign(area.begin(), area.begin() + len);
    resp->msg = wire_util::verify_response(resp->body);
    return finish(std::move(resp), id);
  };
  // Poll for busy_poll_us, letting anything else runnable on this CPU (the daemon, when both
  // share one) go first between looks.
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(busy_poll_us);
  for (uint32_t spins = 1;; ++spins) {
    if (c.reply_seq.load(std::memory_order_acquire) == id) return take();
    if (spins % 16 == 0 && std::chrono::steady_clock::now() >= until) break;
    std::this_thread::yield();
  }
  for (;;) {
    c.client_sleeping.store(1, std::memory_order_seq_cst);
    if (c.reply_seq.load(std::memory_order_seq_cst) == id) {
      c.client_sleeping.store(0, std::memory_order_relaxed);
      return take();
    }
    // Sleep until the socket has something: a doorbell, or (after a marker) the reply itself.
    // A buffered frame that is not a doorbell is this reply, whose marker the daemon published
    // before sending it: the load above would have seen it.
    if (rend - rbeg >= kFrameHeaderBytes)
      return fail_connection(error(Errc::kProtocol, "a reply on the socket without its marker"));
    if (Status st = read_some(0); !st) return st;
    drop_doorbells();
  }
}

}  // namespace kvtier
