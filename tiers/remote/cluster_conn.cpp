#include "tiers/remote/cluster_conn.h"

#include <hiredis/hiredis.h>
#include <poll.h>

#include <cerrno>
#include <ctime>
#include <vector>

namespace kvtier::redis {
namespace {

timeval to_timeval(std::chrono::milliseconds t) {
  if (t < std::chrono::milliseconds(1)) t = std::chrono::milliseconds(1);
  return {.tv_sec = static_cast<time_t>(t.count() / 1000),
          .tv_usec = static_cast<suseconds_t>(t.count() % 1000 * 1000)};
}

// The context's error as an IoError; `saved_errno` is errno right after the failing call
// (hiredis reports a socket timeout as REDIS_ERR_IO with EAGAIN, a connect timeout with
// ETIMEDOUT or EINPROGRESS).
IoError context_error(const redisContext* c, const std::string& address, int saved_errno) {
  const bool timed_out =
      c->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK ||
                                 saved_errno == ETIMEDOUT || saved_errno == EINPROGRESS);
  std::string what = c->err == REDIS_ERR_EOF ? "connection closed" : c->errstr;
  if (timed_out) what = "timed out";
  return {error(Errc::kUnavailable, "redis " + address + ": " + what), timed_out};
}

}  // namespace

void ContextFree::operator()(redisContext* c) const {
  redisFree(c);
}
void ReplyFree::operator()(redisReply* r) const {
  freeReplyObject(r);
}

IoResult<Connection> open_connection(const std::string& host, int port,
                                     std::chrono::milliseconds connect_timeout,
                                     std::chrono::milliseconds command_timeout,
                                     const std::string& password) {
  const std::string address = host + ":" + std::to_string(port);
  errno = 0;
  Connection c(redisConnectWithTimeout(host.c_str(), port, to_timeval(connect_timeout)));
  const int saved_errno = errno;
  if (c == nullptr) return IoError{error(Errc::kUnavailable, "redis " + address + ": no memory")};
  if (c->err != 0) return context_error(c.get(), address, saved_errno);
  set_timeout(c.get(), command_timeout);
  if (!password.empty()) {
    const std::string_view argv[] = {"AUTH", password};
    append_command(c.get(), argv);
    IoResult<OwnedReply> r = read_reply(c.get(), address);
    if (!r.is_ok()) return r.error();
    if (r.value()->type == REDIS_REPLY_ERROR)
      return IoError{
          error(Errc::kPermissionDenied,
                "redis " + address + ": AUTH: " + std::string(r.value()->str, r.value()->len))};
  }
  return c;
}

void set_timeout(redisContext* c, std::chrono::milliseconds timeout) {
  redisSetTimeout(c, to_timeval(timeout));
}

void append_command(redisContext* c, std::span<const std::string_view> argv) {
  // hiredis copies the arguments into its output buffer: the views need only outlive this.
  std::vector<const char*> ptrs(argv.size());
  std::vector<size_t> lens(argv.size());
  for (size_t i = 0; i < argv.size(); ++i) {
    ptrs[i] = argv[i].data();
    lens[i] = argv[i].size();
  }
  redisAppendCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data());
}

std::optional<IoError> flush(redisContext* c, const std::string& address) {
  int done = 0;
  while (done == 0) {
    errno = 0;
    if (redisBufferWrite(c, &done) != REDIS_OK) return context_error(c, address, errno);
  }
  return std::nullopt;
}

IoResult<OwnedReply> read_reply(redisContext* c, const std::string& address) {
  void* raw = nullptr;
  errno = 0;
  if (redisGetReply(c, &raw) != REDIS_OK) return context_error(c, address, errno);
  return OwnedReply(static_cast<redisReply*>(raw));
}

bool idle_connection_alive(redisContext* c) {
  pollfd p{.fd = c->fd, .events = POLLIN | POLLRDHUP, .revents = 0};
  return ::poll(&p, 1, 0) == 0;
}

SigpipeBlock::SigpipeBlock() {
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  sigset_t pending;
  sigpending(&pending);
  was_pending_ = sigismember(&pending, SIGPIPE) == 1;
}

SigpipeBlock::~SigpipeBlock() {
  if (!was_pending_) {
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE) == 1) {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      const timespec now{0, 0};
      sigtimedwait(&pipe, nullptr, &now);
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

}  // namespace kvtier::redis
