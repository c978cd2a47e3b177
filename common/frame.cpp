#include "common/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace kvtier {
namespace {

template <typename T>
void put_le(std::byte* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = std::byte((v >> (8 * i)) & 0xff);
}
template <typename T>
T get_le(const std::byte* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= T(std::to_integer<uint8_t>(p[i])) << (8 * i);
  return v;
}

Status sys_error(const char* what) {
  int e = errno;
  if (e == EPIPE || e == ECONNRESET) return error(Errc::kUnavailable, "connection closed");
  if (e == EAGAIN || e == EWOULDBLOCK)
    return error(Errc::kUnavailable, std::string(what) + ": timed out waiting for the peer");
  return error(Errc::kIo, std::string(what) + ": " + std::strerror(e));
}

}  // namespace

std::array<std::byte, kFrameHeaderBytes> encode_header(const FrameHeader& h) {
  std::array<std::byte, kFrameHeaderBytes> out{};
  put_le<uint32_t>(out.data(), kFrameMagic);
  put_le<uint16_t>(out.data() + 4, h.version);
  put_le<uint16_t>(out.data() + 6, static_cast<uint16_t>(h.kind));
  put_le<uint32_t>(out.data() + 8, h.length);
  put_le<uint32_t>(out.data() + 12, 0);
  return out;
}

Result<FrameHeader> decode_header(std::span<const std::byte, kFrameHeaderBytes> b,
                                  uint64_t max_length) {
  if (get_le<uint32_t>(b.data()) != kFrameMagic)
    return error(Errc::kProtocol, "bad frame magic (not a kvtier peer?)");
  FrameHeader h;
  h.version = get_le<uint16_t>(b.data() + 4);
  if (h.version != kProtocolVersion)
    return error(Errc::kProtocol, "unsupported protocol version " + std::to_string(h.version) +
                                      " (this side speaks " + std::to_string(kProtocolVersion) +
                                      ")");
  uint16_t kind = get_le<uint16_t>(b.data() + 6);
  if (kind > 2) return error(Errc::kProtocol, "bad frame kind " + std::to_string(kind));
  h.kind = static_cast<FrameKind>(kind);
  h.length = get_le<uint32_t>(b.data() + 8);
  if (h.length > max_length)
    return error(Errc::kLimit, "message of " + std::to_string(h.length) +
                                   " bytes exceeds the limit of " + std::to_string(max_length));
  if (h.kind == FrameKind::kDoorbell && h.length != 0)
    return error(Errc::kProtocol, "a doorbell frame has no body");
  if (get_le<uint32_t>(b.data() + 12) != 0)
    return error(Errc::kProtocol, "reserved header field is not zero");
  return h;
}

Status send_all(int sock, std::span<const std::byte> a, std::span<const std::byte> b,
                std::span<const int> fds) {
  iovec iov[2];
  size_t sent = 0;
  const size_t total = a.size() + b.size();
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  while (sent < total) {
    int n = 0;
    if (sent < a.size()) {
      iov[n++] = {const_cast<std::byte*>(a.data()) + sent, a.size() - sent};
      if (!b.empty()) iov[n++] = {const_cast<std::byte*>(b.data()), b.size()};
    } else {
      size_t off = sent - a.size();
      iov[n++] = {const_cast<std::byte*>(b.data()) + off, b.size() - off};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    if (sent == 0 && !fds.empty()) {
      if (fds.size() > kMaxFdsPerMessage) return error(Errc::kInternal, "too many fds");
      std::memset(cbuf, 0, sizeof(cbuf));
      msg.msg_control = cbuf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return sys_error("sendmsg");
    }
    sent += static_cast<size_t>(r);
  }
  return {};
}

Result<size_t> recv_some(int sock, std::span<std::byte> buf, std::vector<int>& fds, int flags) {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  for (;;) {
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);
    ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    if (r < 0) {
      if (errno == EINTR) continue;
      if ((flags & MSG_DONTWAIT) && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
      return sys_error("recvmsg");
    }
    if (r == 0) return error(Errc::kUnavailable, "connection closed by the daemon");
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < n; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (fds.size() < kMaxFdsPerMessage) {
          fds.push_back(fd);
        } else {
          ::close(fd);
        }
      }
    }
    return static_cast<size_t>(r);
  }
}

Status recv_all(int sock, std::span<std::byte> buf, std::vector<int>& fds) {
  for (size_t got = 0; got < buf.size();) {
    auto r = recv_some(sock, buf.subspan(got), fds);
    if (!r) return r.status();
    got += *r;
  }
  return {};
}

}  // namespace kvtier
