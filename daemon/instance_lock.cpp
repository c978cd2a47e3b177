#include "daemon/instance_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

namespace kvtier {

Result<InstanceLock> InstanceLock::acquire(const std::filesystem::path& path) {
  // A few rounds at most: each retry means a holder unlinked the file between our open and
  // our lock, which happens once per stopping daemon.
  for (int round = 0; round < 16; ++round) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0 && errno == EACCES) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
      return error(Errc::kIo,
                   "cannot open lock file " + path.string() + ": " + std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return error(Errc::kAlreadyExists, "held");
      return error(Errc::kIo, "cannot lock " + path.string() + ": " + std::strerror(err));
    }
    struct stat held {
    }, named{};
    if (::fstat(fd, &held) != 0 || ::stat(path.c_str(), &named) != 0 ||
        held.st_ino != named.st_ino || held.st_dev != named.st_dev) {
      ::close(fd);  // the previous holder unlinked it after our open: lock the new file
      continue;
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
      const int err = errno;
      ::close(fd);
      return error(Errc::kIo,
                   "cannot write lock file " + path.string() + ": " + std::strerror(err));
    }
    InstanceLock lock;
    lock.path_ = path;
    lock.fd_ = fd;
    return lock;
  }
  return error(Errc::kIo, "lock file " + path.string() + " keeps being replaced");
}

pid_t InstanceLock::holder(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return 0;
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  ::close(fd);
  if (n <= 0) return 0;
  return static_cast<pid_t>(std::strtol(buf, nullptr, 10));
}

InstanceLock::InstanceLock(InstanceLock&& o) noexcept
    : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)) {}

InstanceLock& InstanceLock::operator=(InstanceLock&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

InstanceLock::~InstanceLock() {
  release();
}

void InstanceLock::release() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // still locked: no other daemon holds this inode
  ::close(fd_);
  fd_ = -1;
}

}  // namespace kvtier
