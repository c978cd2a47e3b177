// The shared-memory request channel of one connection (docs/protocol.md, "Request channel").
//
// A polling client (ClientOptions::busy_poll_us) talking to a polling daemon
// (daemon.busy_poll_us) can pass its requests and replies through a memfd the daemon creates
// for the connection, instead of the socket: one request in flight at a time, one area each
// way, sequence words both sides poll.  A side that stops polling says so in the control
// block and the other rings it with a doorbell frame on the socket, so no wake-up is lost.
// Replies that carry descriptors, and frames too big for an area, still go on the socket.
//
// Layout, version 1 (all integers little-endian, the atomics lock-free and address-free):
//   offset 0     ChannelControl (below), one page
//   offset 4096  request area, request_capacity bytes (a request body, written by the client)
//   then         reply area, reply_capacity bytes (a response body, written by the daemon)
// The daemon never trusts the mapping: it reads each sequence and length word once, bounds
// the length by the capacity it chose, and verifies a copy of the body, never the mapping.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "kvtier/status.h"

namespace kvtier {

constexpr uint32_t kChannelMagic = 0x3143564bu;  // "KVC1"
constexpr uint32_t kChannelVersion = 1;
constexpr size_t kChannelControlBytes = 4096;
// A length word meaning "this frame goes on the socket instead" (a request too big for the
// area; a reply with descriptors, a big one, or progress frames before it).
constexpr uint32_t kChannelOnSocket = 0xffffffffu;

struct ChannelControl {
  uint32_t magic;  // written once by the daemon before the descriptor is passed
  uint32_t version;
  uint32_t request_capacity;
  uint32_t reply_capacity;
  // Written by the client: the id of the request it published (RequestMsg.id; ids grow) and
  // its body length, or kChannelOnSocket.
  alignas(64) std::atomic<uint64_t> request_seq;
  std::atomic<uint32_t> request_len;
  // Set by the daemon before it stops polling and waits on the socket: a client that
  // publishes a request and finds it set clears it and sends a doorbell frame.
  alignas(64) std::atomic<uint32_t> daemon_sleeping;
  // Written by the daemon: the request id answered and the body length (or kChannelOnSocket).
  alignas(64) std::atomic<uint64_t> reply_seq;
  std::atomic<uint32_t> reply_len;
  // The client's counterpart of daemon_sleeping.
  alignas(64) std::atomic<uint32_t> client_sleeping;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(ChannelControl) <= kChannelControlBytes);

// One mapping of a channel memfd, read-write.
class Channel {
 public:
  // The daemon's side: a new sealed memfd (it cannot be shrunk or grown, so a client cannot
  // make the daemon's accesses fault) with the control block initialised.
  static Result<std::unique_ptr<Channel>> create(uint32_t request_capacity,
                                                 uint32_t reply_capacity);
  // The client's side: maps `fd` (taking ownership) and checks the control block against
  // the file's size.
  static Result<std::unique_ptr<Channel>> map(int fd);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  int fd() const { return fd_; }  // owned; the daemon passes a dup
  uint64_t bytes() const { return bytes_; }
  ChannelControl& control() { return *reinterpret_cast<ChannelControl*>(base_); }
  uint32_t request_capacity() const { return request_capacity_; }
  uint32_t reply_capacity() const { return reply_capacity_; }
  std::span<std::byte> request_area() { return {base_ + kChannelControlBytes, request_capacity_}; }
  std::span<std::byte> reply_area() {
    return {base_ + kChannelControlBytes + request_capacity_, reply_capacity_};
  }

 private:
  Channel(int fd, std::byte* base, uint64_t bytes, uint32_t request_capacity,
          uint32_t reply_capacity);
  int fd_;
  std::byte* base_;
  uint64_t bytes_;
  // Constant after construction: the capacities as this side established them (the daemon's
  // own; the client's checked against the file), never re-read from the mapping.
  uint32_t request_capacity_;
  uint32_t reply_capacity_;
};

}  // namespace kvtier
