// Message framing on the Unix socket (docs/protocol.md).
//
// Every message is a 16-byte header followed by a FlatBuffers body:
//   offset 0  u32 magic    'K','V','T','1' (0x3154564b little-endian)
//   offset 4  u16 version  kProtocolVersion
//   offset 6  u16 kind     0 = request (RequestMsg), 1 = response (ResponseMsg),
//                          2 = doorbell (no body: "look at the request channel", common/channel.h)
//   offset 8  u32 length   body bytes, at most the peer's max_message_bytes
//   offset 12 u32 reserved 0
// All integers little-endian.  File descriptors (arena, staging) ride on the first byte of
// a response header as SCM_RIGHTS ancillary data.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/status.h"

namespace kvtier {

constexpr uint32_t kFrameMagic = 0x3154564bu;  // "KVT1"
constexpr uint16_t kProtocolVersion = 1;
constexpr size_t kFrameHeaderBytes = 16;
constexpr size_t kMaxFdsPerMessage = 4;

enum class FrameKind : uint16_t { kRequest = 0, kResponse = 1, kDoorbell = 2 };

struct FrameHeader {
  uint16_t version = kProtocolVersion;
  FrameKind kind = FrameKind::kRequest;
  uint32_t length = 0;
};

std::array<std::byte, kFrameHeaderBytes> encode_header(const FrameHeader& h);
// Checks magic, version, kind and that length <= max_length (0 for a doorbell).
Result<FrameHeader> decode_header(std::span<const std::byte, kFrameHeaderBytes> bytes,
                                  uint64_t max_length);

// Blocking helpers on a stream socket (EINTR retried).  send_all attaches `fds` to the first
// byte; recv_all collects any descriptors that arrive while it reads (closing extras beyond
// kMaxFdsPerMessage) into `fds`, which the caller owns.
Status send_all(int sock, std::span<const std::byte> a, std::span<const std::byte> b,
                std::span<const int> fds = {});
Status recv_all(int sock, std::span<std::byte> buf, std::vector<int>& fds);
// One recvmsg (EINTR retried): the byte count, > 0; descriptors as recv_all; kUnavailable at
// EOF.  With MSG_DONTWAIT in `flags`, 0 when nothing is there yet.
Result<size_t> recv_some(int sock, std::span<std::byte> buf, std::vector<int>& fds, int flags = 0);

}  // namespace kvtier
