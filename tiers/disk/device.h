// The disk tier's I/O seam: a Device reads and writes aligned buffers at offsets of numbered
// region files.  Implementations: io_uring (device_uring.cpp), a pread/pwrite thread pool
// (device_threads.cpp); the test doubles (in memory, fault-injecting) live in
// tests/testing/devices/.  errno values become Status here, in errno_status(), and nowhere else.
//
// Thread-safety: every method may be called from any thread.  Completion callbacks run on a
// device thread (or, for the in-memory device, on the caller's thread before read()/write()
// returns): they must be short and must not call back into the device synchronously.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier {

// Region files are read and written in multiples of this, from buffers aligned to it.
constexpr uint64_t kDiskAlign = 4096;

// Result of one transfer: the bytes moved (may be short) or the error.
using IoDone = std::function<void(Result<size_t>)>;

class Device {
 public:
  virtual ~Device() = default;
  // "io_uring", "threads (io_uring refused: EPERM)", "memory", with "+ buffered (O_DIRECT
  // refused)" appended where the file system refused O_DIRECT.
  virtual std::string describe() const = 0;

  // An empty file, replacing any old one, with `reserve_bytes` preallocated where the file
  // system can (fallocate: appends then never extend the file, so they run in parallel).
  virtual Status create_region(uint32_t region, uint64_t reserve_bytes) = 0;
  virtual Status open_region(uint32_t region) = 0;    // an existing file
  virtual Status remove_region(uint32_t region) = 0;  // closes and deletes
  virtual std::vector<uint32_t> list_regions() = 0;   // ids of the region files present
  virtual Result<uint64_t> region_size(uint32_t region) = 0;

  // Asynchronous; buf and offset aligned to kDiskAlign, buf alive until done runs.
  virtual void write(uint32_t region, uint64_t offset, std::span<const std::byte> buf,
                     IoDone done) = 0;
  virtual void read(uint32_t region, uint64_t offset, std::span<std::byte> buf, IoDone done) = 0;
  // Pushes queued submissions to the kernel (io_uring batches until then; others: no-op).
  virtual void submit() {}
  // Synchronous fdatasync of a region file: on return, completed writes are durable.
  virtual Status sync(uint32_t region) = 0;
};

// Errno -> Status for the disk tier (ENOSPC -> kNoSpace, everything else -> kIo).
Status errno_status(int err, std::string_view what);

struct FileDeviceOptions {
  std::filesystem::path dir;     // region files live here as region-XXXXXXXX.kvr
  bool o_direct = true;          // falls back to buffered I/O where open() says EINVAL
  uint32_t threads = 2;          // thread-pool device only
  uint32_t queue_depth = 128;    // io_uring only
  bool refuse_io_uring = false;  // test hook: behave as if the io_uring probe failed
};

// Probes io_uring (queue init + a NOP round trip); the error says why it was refused.
// Also refused when refuse_io_uring is set or the environment has KVTIER_DISK_NO_URING=1.
Result<std::unique_ptr<Device>> make_uring_device(const FileDeviceOptions& options);
// `why` is appended to describe(): "threads (io_uring refused: EPERM)".
Result<std::unique_ptr<Device>> make_thread_device(const FileDeviceOptions& options,
                                                   std::string why = {});

// A heap buffer aligned to kDiskAlign, size rounded up to it.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  std::byte* data() const { return p_.get(); }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {p_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte, Free> p_;
  size_t size_ = 0;
};

// Blocks the calling thread on one transfer (open-time recovery, tests).
Result<size_t> read_sync(Device& dev, uint32_t region, uint64_t offset, std::span<std::byte> buf);
Result<size_t> write_sync(Device& dev, uint32_t region, uint64_t offset,
                          std::span<const std::byte> buf);

}  // namespace kvtier
