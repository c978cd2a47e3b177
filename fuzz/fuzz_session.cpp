// Harness (a): frame decoding and request dispatch of a real kvtierd Session.
//
// One Server (fuzz/daemon_fixture.h) for the process; per input a new Session on one end of a
// socket pair, the input written to the other end as the client's byte stream, then EOF.  The
// session's coroutine runs on this harness's io_context, interleaved with the client side
// here, until it has answered everything and closed.  Every reply must be a well-formed
// response frame whose body verifies as a ResponseMsg; afterwards the cache is emptied so the
// next input starts from the same state (put and lease ids start at 1 in each session).
//
// Inputs are streams of request frames (fuzz/frames.h mutates them frame by frame, and
// inserts requests of every type built with the generated builders, fuzz/requests.h); the
// seed corpus fuzz/corpus/session/ comes from fuzz/seeds.cpp.
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "common/wire.h"
#include "fuzz/daemon_fixture.h"
#include "fuzz/frames.h"

namespace asio = boost::asio;
using namespace kvtier;

namespace {

fuzz::Daemon& daemon() {
  static fuzz::Daemon d("session");
  return d;
}

[[noreturn]] void bad_reply(const char* why) {
  std::fprintf(stderr, "fuzz_session: the daemon sent a bad reply: %s\n", why);
  std::abort();
}

// Checks the reply frames in `buf` as they complete; consumes what it checked.
void check_replies(std::vector<std::byte>& buf) {
  size_t at = 0;
  while (buf.size() - at >= kFrameHeaderBytes) {
    std::span<const std::byte, kFrameHeaderBytes> header(buf.data() + at, kFrameHeaderBytes);
    auto h = decode_header(header, 1ull << 30);
    if (!h) bad_reply(h.status().message().c_str());
    if (h->kind != FrameKind::kResponse) bad_reply("not a response frame");
    if (buf.size() - at - kFrameHeaderBytes < h->length) break;
    if (!wire_util::verify_response({buf.data() + at + kFrameHeaderBytes, h->length}))
      bad_reply("the body fails verification");
    at += kFrameHeaderBytes + h->length;
  }
  buf.erase(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(at));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Daemon& d = daemon();
  static asio::io_context io(1);
  io.restart();
  Session::Socket daemon_end(io), client_end(io);
  asio::local::connect_pair(daemon_end, client_end);
  auto session = std::make_shared<Session>(*d.server, std::move(daemon_end), d.peer);
  bool session_done = false;
  asio::co_spawn(io, Session::run(std::move(session)), [&](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
    session_done = true;
  });

  const int fd = client_end.native_handle();
  size_t sent = 0;
  bool eof = false;
  std::vector<std::byte> replies;
  std::vector<int> fds;
  while (!(session_done && eof)) {
    if (sent < size) {
      const ssize_t n = ::send(fd, data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        sent = size;  // the session closed its end (a bad frame)
      }
      if (sent == size) ::shutdown(fd, SHUT_WR);
    } else if (size == 0 && sent == 0) {
      ::shutdown(fd, SHUT_WR);
      sent = 1;
    }
    io.poll();
    for (;;) {  // what the session answered so far
      std::byte chunk[16384];
      auto r = recv_some(fd, chunk, fds, MSG_DONTWAIT);
      for (int f : fds) ::close(f);  // arena, staging and channel descriptors
      fds.clear();
      if (!r) {
        eof = true;
        break;
      }
      if (*r == 0) break;
      replies.insert(replies.end(), chunk, chunk + *r);
      check_replies(replies);
    }
  }
  if (!replies.empty()) bad_reply("a truncated frame");
  d.reset();
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned seed) {
  return fuzz::mutate_frames(data, size, max_size, seed);
}

extern "C" size_t LLVMFuzzerCustomCrossOver(const uint8_t* a, size_t a_size, const uint8_t* b,
                                            size_t b_size, uint8_t* out, size_t max_size,
                                            unsigned seed) {
  return fuzz::cross_frames(a, a_size, b, b_size, out, max_size, seed);
}
