#include "common/channel.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

namespace kvtier {
namespace {

Status sys_error(const char* what) {
  return error(Errc::kIo, std::string(what) + ": " + std::strerror(errno));
}

uint64_t mapping_bytes(uint64_t request_capacity, uint64_t reply_capacity) {
  return kChannelControlBytes + request_capacity + reply_capacity;
}

}  // namespace

Channel::Channel(int fd, std::byte* base, uint64_t bytes, uint32_t request_capacity,
                 uint32_t reply_capacity)
    : fd_(fd),
      base_(base),
      bytes_(bytes),
      request_capacity_(request_capacity),
      reply_capacity_(reply_capacity) {}

Channel::~Channel() {
  ::munmap(base_, bytes_);
  ::close(fd_);
}

Result<std::unique_ptr<Channel>> Channel::create(uint32_t request_capacity,
                                                 uint32_t reply_capacity) {
  if (request_capacity == 0 || reply_capacity == 0 || request_capacity % 64 != 0 ||
      reply_capacity % 64 != 0)
    return error(Errc::kInvalidArgument, "channel areas must be non-empty multiples of 64 bytes");
  const uint64_t bytes = mapping_bytes(request_capacity, reply_capacity);
  int fd = ::memfd_create("kvtier-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return sys_error("memfd_create channel");
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    Status st = sys_error("sizing channel memfd");
    ::close(fd);
    return st;
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    Status st = sys_error("mmap channel");
    ::close(fd);
    return st;
  }
  auto* c = new (p) ChannelControl{};
  c->magic = kChannelMagic;
  c->version = kChannelVersion;
  c->request_capacity = request_capacity;
  c->reply_capacity = reply_capacity;
  return std::unique_ptr<Channel>(
      new Channel(fd, static_cast<std::byte*>(p), bytes, request_capacity, reply_capacity));
}

Result<std::unique_ptr<Channel>> Channel::map(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Status s = sys_error("fstat channel");
    ::close(fd);
    return s;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kChannelControlBytes) {
    ::close(fd);
    return error(Errc::kProtocol, "channel memfd smaller than its control block");
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    Status s = sys_error("mmap channel");
    ::close(fd);
    return s;
  }
  const auto* c = static_cast<const ChannelControl*>(p);
  const uint32_t req = c->request_capacity, rep = c->reply_capacity;
  auto channel =
      std::unique_ptr<Channel>(new Channel(fd, static_cast<std::byte*>(p), size, req, rep));
  if (c->magic != kChannelMagic || c->version != kChannelVersion)
    return error(Errc::kProtocol, "channel of an unknown format (magic " +
                                      std::to_string(c->magic) + ", version " +
                                      std::to_string(c->version) + ")");
  if (req == 0 || rep == 0 || mapping_bytes(req, rep) > size)
    return error(Errc::kProtocol, "channel areas do not fit its memfd");
  return channel;
}

}  // namespace kvtier
