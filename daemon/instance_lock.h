// An exclusive claim on a name that only one kvtierd may use at a time: the shared-memory
// prefix (its objects live in the one /dev/shm namespace of the host) and the socket path.
//
// The claim is flock(LOCK_EX) on a lock file named after the resource.  The holder writes its
// pid into the file; a refused daemon reads it back for its message.  flock is released by the
// kernel when the holder dies, so a crash leaves no stale claim, only a file the next daemon
// locks again.  The holder unlinks the file while still holding the lock when it stops; a
// daemon that locked an inode some other daemon unlinked meanwhile notices (the path no longer
// names its inode) and starts over, so two daemons never both believe they hold a name.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "kvtier/status.h"

namespace kvtier {

class InstanceLock {
 public:
  // Locks `path` (creating it, mode 0644, so that a refused daemon of another user can still
  // read the pid).  kAlreadyExists when another process holds it: holder() says who.
  static Result<InstanceLock> acquire(const std::filesystem::path& path);
  // The pid written in the lock file at `path`, or 0 when unreadable.
  static pid_t holder(const std::filesystem::path& path);

  InstanceLock() = default;
  InstanceLock(InstanceLock&& o) noexcept;
  InstanceLock& operator=(InstanceLock&& o) noexcept;
  ~InstanceLock();  // unlinks the file, then releases the lock

  bool held() const { return fd_ >= 0; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void release();
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace kvtier
