#include "tiers/host/shm_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <cerrno>
#include <cstring>

namespace bip = boost::interprocess;

namespace kvtier {

struct ShmArena::Impl {
  bip::shared_memory_object shm;
  bip::mapped_region region;
  bip::managed_external_buffer heap;
};

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void prefault(std::byte* base, uint64_t bytes) {
  if (::madvise(base, bytes, MADV_POPULATE_WRITE) == 0) return;
  // Older kernels: touch each page (the segment is still all zeros here).
  const long page = ::sysconf(_SC_PAGESIZE);
  for (uint64_t off = 0; off < bytes; off += page) {
    reinterpret_cast<volatile char*>(base)[off] = 0;
  }
}

}  // namespace

ShmArena::ShmArena(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ShmArena>> ShmArena::create(const std::string& name, uint64_t bytes,
                                                   bool do_prefault) {
  try {
    bip::shared_memory_object::remove(name.c_str());
    bip::permissions perm(0600);  // clients get descriptors, never the name
    auto impl = std::make_unique<Impl>();
    impl->shm = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write, perm);
    impl->shm.truncate(static_cast<bip::offset_t>(bytes));
    impl->region = bip::mapped_region(impl->shm, bip::read_write, 0, bytes);
    auto* base = static_cast<std::byte*>(impl->region.get_address());
    if (do_prefault) prefault(base, bytes);
    impl->heap = bip::managed_external_buffer(bip::create_only, base, bytes);
    std::unique_ptr<ShmArena> arena(new ShmArena(std::move(impl)));
    arena->name_ = name;
    arena->base_ = base;
    arena->size_ = bytes;
    return arena;
  } catch (const bip::interprocess_exception& e) {
    bip::shared_memory_object::remove(name.c_str());
    return error(Errc::kIo, "cannot create shared memory /dev/shm/" + name + " of " +
                                std::to_string(bytes) + " bytes: " + e.what());
  }
}

ShmArena::~ShmArena() {
  // Only our own object: a name some other process replaced since is not ours to remove.
  if (impl_ && name_intact()) bip::shared_memory_object::remove(name_.c_str());
}

bool ShmArena::name_intact() const {
  struct stat ours {
  }, named{};
  const std::string path = "/dev/shm/" + name_;
  return ::fstat(impl_->shm.get_mapping_handle().handle, &ours) == 0 &&
         ::stat(path.c_str(), &named) == 0 && ours.st_ino == named.st_ino &&
         ours.st_dev == named.st_dev;
}

Result<uint64_t> ShmArena::allocate(uint64_t bytes) {
  void* p = impl_->heap.allocate_aligned(bytes, kAlignment, std::nothrow);
  if (p == nullptr) return error(Errc::kNoSpace, "arena full");
  return static_cast<uint64_t>(static_cast<std::byte*>(p) - base_);
}

void ShmArena::deallocate(uint64_t offset) {
  impl_->heap.deallocate(base_ + offset);
}

uint64_t ShmArena::free_bytes() const {
  return impl_->heap.get_free_memory();
}

Result<int> ShmArena::open_readonly_fd() const {
  // Reopened through the descriptor the arena holds, never by name: whatever happened to
  // /dev/shm/<name> since (removed, or replaced by another process), a client maps this
  // arena.  /proc/self/fd/N opens the same object with the new (read-only) mode.
  const std::string path =
      "/proc/self/fd/" + std::to_string(impl_->shm.get_mapping_handle().handle);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return error(Errc::kIo, "reopen /dev/shm/" + name_ + " read-only: " + std::strerror(errno));
  return fd;
}

}  // namespace kvtier
