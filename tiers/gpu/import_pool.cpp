// The client side of a pool export: import_pool() for every handle type.  The memfd path
// (the host emulation) needs nothing but mmap, so it works in every build; CUDA handles go
// to import_cuda_pool().  Linked into libkvtier (kvtier_gpu_import).
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "tiers/gpu/cuda_import.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {
namespace {

class MappedMemfd final : public ImportedPool {
 public:
  MappedMemfd(void* base, uint64_t size, int device) : base_(base), size_(size), device_(device) {}
  ~MappedMemfd() override { ::munmap(base_, size_); }
  std::uintptr_t base() const override { return reinterpret_cast<std::uintptr_t>(base_); }
  uint64_t size() const override { return size_; }
  int device() const override { return device_; }

 private:
  void* const base_;
  const uint64_t size_;
  const int device_;
};

Result<std::unique_ptr<ImportedPool>> import_memfd(const PoolExport& e) {
  const std::string who = "import of emulated gpu " + std::to_string(e.device) + " pool";
  struct stat st;
  if (::fstat(e.fd, &st) != 0) {
    return error(Errc::kInvalidArgument, who + ": fstat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < e.bytes) {
    return error(Errc::kInvalidArgument, who + ": the descriptor is not a memory file of " +
                                             std::to_string(e.bytes) + " bytes");
  }
  void* p = ::mmap(nullptr, e.bytes, e.writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED,
                   e.fd, 0);
  if (p == MAP_FAILED) return error(Errc::kIo, who + ": mmap: " + std::strerror(errno));
  return std::unique_ptr<ImportedPool>(new MappedMemfd(p, e.bytes, e.device));
}

// Closes the received descriptor on every path out of import_pool().
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

const char* handle_type_name(HandleType t) {
  switch (t) {
    case HandleType::kVmmFd:
      return "vmm";
    case HandleType::kCudaIpc:
      return "ipc";
    case HandleType::kMemfd:
      return "memfd";
  }
  return "unknown";
}

Result<std::unique_ptr<ImportedPool>> import_pool(PoolExport e) {
  FdCloser closer{e.fd};
  if (e.bytes == 0) return error(Errc::kInvalidArgument, "import of an empty gpu pool");
  switch (e.type) {
    case HandleType::kMemfd:
      if (e.fd < 0) return error(Errc::kInvalidArgument, "memfd pool export without a descriptor");
      return import_memfd(e);
    case HandleType::kVmmFd:
      if (e.fd < 0) return error(Errc::kInvalidArgument, "vmm pool export without a descriptor");
      return import_cuda_pool(e);
    case HandleType::kCudaIpc:
      return import_cuda_pool(e);
  }
  return error(Errc::kInvalidArgument,
               "unknown gpu pool handle type " + std::to_string(static_cast<int>(e.type)));
}

}  // namespace kvtier::gpu
