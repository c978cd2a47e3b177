// Internal: one blocking hiredis connection to one node, and the few operations the cluster
// client makes of it.  hiredis errors become Errc here and nowhere else: kUnavailable for a
// refused, reset or timed-out connection, kPermissionDenied for a refused AUTH.
#pragma once

#include <signal.h>

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "kvtier/status.h"

struct redisContext;
struct redisReply;

namespace kvtier::redis {

struct ContextFree {
  void operator()(redisContext* c) const;
};
struct ReplyFree {
  void operator()(redisReply* r) const;
};
using Connection = std::unique_ptr<redisContext, ContextFree>;
using OwnedReply = std::unique_ptr<redisReply, ReplyFree>;

// Why an I/O operation failed; a connection that failed is dropped, never reused.
struct IoError {
  Status status;           // kUnavailable (or kPermissionDenied from AUTH)
  bool timed_out = false;  // no answer within the timeout, as opposed to refused or reset
};

// A value or the IoError that prevented it (Result<T> with the timeout told apart).
template <typename T>
class [[nodiscard]] IoResult {
 public:
  IoResult(T value) : v_(std::move(value)) {}
  IoResult(IoError e) : v_(std::move(e)) {}
  bool is_ok() const { return v_.index() == 0; }
  T& value() { return std::get<0>(v_); }
  const IoError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, IoError> v_;
};

// Connects within `connect_timeout`, sets `command_timeout` on the socket and sends AUTH
// when `password` is not empty.
IoResult<Connection> open_connection(const std::string& host, int port,
                                     std::chrono::milliseconds connect_timeout,
                                     std::chrono::milliseconds command_timeout,
                                     const std::string& password);

// Sets the socket's send and receive timeouts (at least 1 ms: hiredis reads 0 as "none").
void set_timeout(redisContext* c, std::chrono::milliseconds timeout);

// Queues one command in the connection's output buffer (nothing is sent yet).
void append_command(redisContext* c, std::span<const std::string_view> argv);

// Sends everything queued; an error leaves the connection unusable.
std::optional<IoError> flush(redisContext* c, const std::string& address);

// Reads the next reply (flushing first if anything is still queued).
IoResult<OwnedReply> read_reply(redisContext* c, const std::string& address);

// False when an idle connection's peer has closed it or sent something unasked (a pooled
// connection must have nothing to read).
bool idle_connection_alive(redisContext* c);

// Blocks SIGPIPE in the calling thread for its scope and discards one raised meanwhile:
// hiredis writes with write(), and a peer that died must not kill the process (the daemon
// ignores SIGPIPE; a test binary or another host program may not).
class SigpipeBlock {
 public:
  SigpipeBlock();
  ~SigpipeBlock();
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t old_;
  bool was_pending_ = false;
};

}  // namespace kvtier::redis
