// A mutex the compiler can reason about: leveldb-style thread-safety annotations
// (port/thread_annotations.h) over std::mutex.  clang's -Wthread-safety checks every
// GUARDED_BY member is touched with its mutex held and every REQUIRES function is called
// with it; scripts/thread_safety.sh builds the tree that way with -Werror in CI.  Other
// compilers see plain macros that expand to nothing.
#pragma once

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define KVTIER_TSA(x) __attribute__((x))
#else
#define KVTIER_TSA(x)
#endif

#define CAPABILITY(x) KVTIER_TSA(capability(x))
#define SCOPED_CAPABILITY KVTIER_TSA(scoped_lockable)
#define GUARDED_BY(x) KVTIER_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) KVTIER_TSA(pt_guarded_by(x))
#define REQUIRES(...) KVTIER_TSA(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) KVTIER_TSA(requires_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) KVTIER_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) KVTIER_TSA(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) KVTIER_TSA(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) KVTIER_TSA(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) KVTIER_TSA(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) KVTIER_TSA(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) KVTIER_TSA(try_acquire_capability(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) KVTIER_TSA(assert_capability(x))
#define NO_THREAD_SAFETY_ANALYSIS KVTIER_TSA(no_thread_safety_analysis)

namespace kvtier {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis the caller holds it (where it cannot see so: callbacks run under it).
  void assert_held() const ASSERT_CAPABILITY(this) {}

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope; unlock()/lock() release and retake it inside the scope, and a
// CondVar waits on it.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mu_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  void lock() ACQUIRE() {
    mu_.lock();
    held_ = true;
  }
  void unlock() RELEASE() {
    mu_.unlock();
    held_ = false;
  }

 private:
  Mutex& mu_;
  bool held_ = true;
};

// A condition variable over Mutex: wait(lock) with a MutexLock.
using CondVar = std::condition_variable_any;

}  // namespace kvtier
