#include "daemon/staging.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/layout.h"

namespace kvtier {

Result<std::unique_ptr<Staging>> Staging::create(uint64_t bytes) {
  // Sealed at its size: the client holds the descriptor, and a staging file it could shrink
  // would make the daemon's reads of a sealed put fault (SIGBUS) instead of fail.
  int fd = ::memfd_create("kvtier-staging", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return error(Errc::kIo, std::string("memfd_create: ") + std::strerror(errno));
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    int e = errno;
    ::close(fd);
    return error(Errc::kIo, std::string("ftruncate staging: ") + std::strerror(e));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    return error(Errc::kIo, std::string("mmap staging: ") + std::strerror(e));
  }
  return std::unique_ptr<Staging>(new Staging(fd, static_cast<std::byte*>(p), bytes));
}

Staging::Staging(int fd, std::byte* base, uint64_t size) : fd_(fd), base_(base), size_(size) {
  free_.emplace(0, size);
}

Staging::~Staging() {
  ::munmap(base_, size_);
  ::close(fd_);
}

Result<uint64_t> Staging::allocate(uint64_t bytes) {
  bytes = align_up(std::max<uint64_t>(bytes, 1), kTensorAlignment);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes) continue;
    uint64_t off = it->first;
    uint64_t rest = it->second - bytes;
    free_.erase(it);
    if (rest) free_.emplace(off + bytes, rest);
    used_.emplace(off, bytes);
    return off;
  }
  return error(Errc::kLimit, "staging area full (" + std::to_string(size_ >> 20) +
                                 " MiB): seal or abort pending puts, or raise "
                                 "session.staging_bytes");
}

void Staging::free(uint64_t offset) {
  auto u = used_.find(offset);
  if (u == used_.end()) return;
  uint64_t len = u->second;
  used_.erase(u);
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first == offset + len) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += len;
      return;
    }
  }
  free_.emplace(offset, len);
}

}  // namespace kvtier
