// Harness (b): the shared-memory request channel (common/channel.h, daemon/session_channel.cpp)
// under a hostile client.
//
// A polling Server (daemon.busy_poll_us = 1, fuzz/daemon_fixture.h) and, per input, a Session
// over a socket pair that opens its channel (OpenChannelReq; the memfd arrives by SCM_RIGHTS
// and is mapped here as the client's side).  The input is then a list of client actions:
// publish a request (a valid one built with the generated builders, or raw bytes) with any
// length word (0, the capacity, capacity + 1, 0xffffffff ...) and any sequence word (the
// next, the same, an older one, 2^64-1 ...); write any word of the control page (magic,
// capacities, the sleeping flags, the reply words); ring doorbells, well-formed or not; send
// requests on the socket meanwhile; let the session run.  What the daemon publishes must stay
// inside the reply area and verify as a ResponseMsg; socket replies must be well-formed.
// Channel::map (the client's side) also gets memfds of any size and contents.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "common/channel.h"
#include "common/wire.h"
#include "fuzz/daemon_fixture.h"
#include "fuzz/requests.h"

namespace asio = boost::asio;
using namespace kvtier;

namespace {

fuzz::Daemon& daemon() {
  static fuzz::Daemon d("channel", "busy_poll_us = 1\nrequest_channel = true\n");
  return d;
}

[[noreturn]] void fail(const char* why) {
  std::fprintf(stderr, "fuzz_channel: %s\n", why);
  std::abort();
}

// The client's end of one connection with an open channel.
class Client {
 public:
  explicit Client(asio::io_context& io) : io_(io), end_(io) {
    fuzz::Daemon& d = daemon();
    Session::Socket daemon_end(io);
    asio::local::connect_pair(daemon_end, end_);
    asio::co_spawn(
        io, Session::run(std::make_shared<Session>(*d.server, std::move(daemon_end), d.peer)),
        [done = done_](std::exception_ptr e) {
          if (e) std::rethrow_exception(e);
          *done = true;
        });
    fd_ = end_.native_handle();
    flatbuffers::FlatBufferBuilder fbb;
    send_frame(fuzz::frame_of(
        fuzz::body_of(fbb, wire::CreateRequestMsg(fbb, 1, wire::Request::OpenChannelReq,
                                                  wire::CreateOpenChannelReq(fbb).Union()))));
    for (int i = 0; i < 1000 && !channel_; ++i) pump();
    if (!channel_) fail("the daemon did not open a channel");
    seq_ = 1;
  }

  ~Client() {
    ::shutdown(fd_, SHUT_WR);
    for (int i = 0; i < 100000 && !(*done_ && eof_); ++i) pump();
    if (!(*done_ && eof_)) fail("the session did not end after EOF");
  }

  Channel& channel() { return *channel_; }
  ChannelControl& control() { return channel_->control(); }
  uint64_t& seq() { return seq_; }

  void send_frame(const fuzz::Bytes& f) {
    size_t at = 0;
    for (int tries = 0; at < f.size() && tries < 1000; ++tries) {
      const ssize_t n = ::send(fd_, f.data() + at, f.size() - at, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        at += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return;  // the session closed its end
      } else {
        pump();
      }
    }
  }

  // Lets the session run what is ready, then takes what it sent on the socket.
  void pump() {
    io_.poll();
    if (io_.stopped()) io_.restart();
    for (;;) {
      std::byte chunk[16384];
      std::vector<int> fds;
      auto r = recv_some(fd_, chunk, fds, MSG_DONTWAIT);
      if (!fds.empty() && !channel_) {
        auto c = Channel::map(fds.front());  // takes the descriptor
        if (!c) fail("the daemon's channel does not map");
        channel_ = std::move(c).value();
        fds.erase(fds.begin());
      }
      for (int f : fds) ::close(f);
      if (!r) {
        eof_ = true;
        return;
      }
      if (*r == 0) return;
      buf_.insert(buf_.end(), chunk, chunk + *r);
      check_socket();
    }
  }

  // A reply the daemon published in the reply area must fit it and verify.
  void check_reply_area() {
    ChannelControl& c = control();
    const uint64_t seq = c.reply_seq.load(std::memory_order_seq_cst);
    if (seq == last_reply_) return;
    last_reply_ = seq;
    const uint32_t len = c.reply_len.load(std::memory_order_relaxed);
    if (len == kChannelOnSocket) return;
    if (len > channel_->reply_capacity()) fail("a reply longer than the reply area");
    if (!wire_util::verify_response(channel_->reply_area().first(len)))
      fail("a published reply fails verification");
  }

  // After the client itself wrote the reply words: only what the daemon publishes next counts.
  void resync() { last_reply_ = control().reply_seq.load(std::memory_order_seq_cst); }

  bool gone() const { return *done_; }

 private:
  void check_socket() {
    size_t at = 0;
    while (buf_.size() - at >= kFrameHeaderBytes) {
      std::span<const std::byte, kFrameHeaderBytes> header(buf_.data() + at, kFrameHeaderBytes);
      auto h = decode_header(header, 1ull << 30);
      if (!h) fail("a bad frame header on the socket");
      if (h->kind == FrameKind::kRequest) fail("a request frame from the daemon");
      if (buf_.size() - at - kFrameHeaderBytes < h->length) break;
      if (h->kind == FrameKind::kResponse &&
          !wire_util::verify_response({buf_.data() + at + kFrameHeaderBytes, h->length}))
        fail("a socket reply fails verification");
      at += kFrameHeaderBytes + h->length;
    }
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<ptrdiff_t>(at));
  }

  asio::io_context& io_;
  Session::Socket end_;
  int fd_ = -1;
  std::shared_ptr<bool> done_ = std::make_shared<bool>(false);
  bool eof_ = false;
  std::unique_ptr<Channel> channel_;
  std::vector<std::byte> buf_;
  uint64_t seq_ = 0;
  uint64_t last_reply_ = 0;
};

// Channel::map, the client's side, on a memfd of any size and contents.
void map_hostile(FuzzedDataProvider& in) {
  const int fd = ::memfd_create("kvtier-fuzz-channel", MFD_CLOEXEC);
  if (fd < 0) return;
  const size_t size = in.ConsumeIntegralInRange<size_t>(0, 1 << 20);
  const auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 256));
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      ::pwrite(fd, bytes.data(), std::min(bytes.size(), size), 0) < 0) {
    ::close(fd);
    return;
  }
  auto c = Channel::map(fd);
  if (!c) return;
  // Every byte of both areas must lie inside the file (else SIGBUS).
  auto req = (*c)->request_area();
  auto rep = (*c)->reply_area();
  volatile std::byte sink;
  if (!req.empty()) sink = req.back();
  if (!rep.empty()) sink = rep.back();
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static asio::io_context io(1);
  io.restart();
  FuzzedDataProvider in(data, size);
  std::optional<Client> client;
  client.emplace(io);
  for (int steps = 0; in.remaining_bytes() > 0 && steps < 64; ++steps) {
    if (client->gone()) break;  // a bad frame closed the connection
    Channel& ch = client->channel();
    ChannelControl& c = client->control();
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: {  // publish a request
        fuzz::Bytes body;
        const uint64_t next = client->seq() + 1;
        if (in.ConsumeBool()) {
          fuzz::Gen g(in.ConsumeIntegral<uint64_t>());
          body = g.any_request(next);
        } else {
          body = in.ConsumeBytes<uint8_t>(
              in.ConsumeIntegralInRange<size_t>(0, ch.request_capacity() + 64));
        }
        const size_t n = std::min<size_t>(body.size(), ch.request_capacity());
        if (n > 0) std::memcpy(ch.request_area().data(), body.data(), n);
        static const uint32_t kLens[] = {0, kChannelOnSocket, 1, 0x7fffffff};
        uint32_t len = static_cast<uint32_t>(body.size());
        switch (in.ConsumeIntegralInRange<int>(0, 7)) {
          case 0:
            len = kLens[in.ConsumeIntegralInRange<size_t>(0, 3)];
            break;
          case 1:
            len = ch.request_capacity() + in.ConsumeIntegralInRange<uint32_t>(0, 1);
            break;
          case 2:
            len = in.ConsumeIntegral<uint32_t>();
            break;
          default:
            break;
        }
        uint64_t seq = next;
        switch (in.ConsumeIntegralInRange<int>(0, 9)) {
          case 0:
            seq = client->seq();  // the same again
            break;
          case 1:
            seq = client->seq() - 1;
            break;
          case 2:
            seq = in.ConsumeIntegral<uint64_t>();
            break;
          case 3:
            seq = UINT64_MAX;
            break;
          default:
            break;
        }
        client->seq() = seq;
        c.request_len.store(len, std::memory_order_relaxed);
        c.request_seq.store(seq, std::memory_order_seq_cst);
        // A well-behaved client rings a sleeping daemon; a hostile one may not.
        if (in.ConsumeBool() && c.daemon_sleeping.exchange(0, std::memory_order_seq_cst) != 0)
          client->send_frame(fuzz::frame_of({}, FrameKind::kDoorbell));
        break;
      }
      case 1: {  // any word of the control page
        const size_t at = in.ConsumeIntegralInRange<size_t>(0, kChannelControlBytes / 4 - 2) * 4;
        auto* page = reinterpret_cast<std::byte*>(&c);
        if (in.ConsumeBool()) {
          const uint32_t v = in.ConsumeIntegral<uint32_t>();
          std::memcpy(page + at, &v, 4);
        } else {
          const uint64_t v = in.ConsumeIntegral<uint64_t>();
          std::memcpy(page + at, &v, 8);
        }
        client->resync();
        break;
      }
      case 2: {  // a doorbell, possibly with a body or a wrong kind
        auto f = fuzz::frame_of({}, FrameKind::kDoorbell);
        if (in.ConsumeBool()) {
          const uint32_t length = in.ConsumeIntegralInRange<uint32_t>(0, 64);
          std::memcpy(f.data() + 8, &length, 4);
          f.resize(f.size() + length);
        }
        if (in.ConsumeBool()) f[6] = in.ConsumeIntegral<uint8_t>();
        client->send_frame(f);
        break;
      }
      case 3: {  // a request on the socket meanwhile
        fuzz::Gen g(in.ConsumeIntegral<uint64_t>());
        client->seq() += 1;
        client->send_frame(fuzz::frame_of(g.any_request(client->seq())));
        break;
      }
      case 4:  // the client says it sleeps (or not)
        c.client_sleeping.store(in.ConsumeBool() ? 1 : 0, std::memory_order_seq_cst);
        break;
      case 5:  // raw bytes into the request area, at any offset
      {
        const auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(1, 64));
        const size_t at = in.ConsumeIntegralInRange<size_t>(0, ch.request_capacity() - 1);
        if (!bytes.empty())
          std::memcpy(ch.request_area().data() + at, bytes.data(),
                      std::min(bytes.size(), ch.request_capacity() - at));
        break;
      }
      case 6:
        map_hostile(in);
        break;
      default: {  // let the session run
        const int n = in.ConsumeIntegralInRange<int>(1, 8);
        for (int i = 0; i < n; ++i) client->pump();
        break;
      }
    }
    client->pump();
    client->check_reply_area();
  }
  client.reset();
  daemon().reset();
  return 0;
}
