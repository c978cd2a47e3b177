// The host emulation of a DeviceBackend: each pool is a memfd mapped read-write here and
// exported as a read-only descriptor of the same file, so importers map it PROT_READ exactly
// as clients of a real GPU pool would open it.  Copies are memcpy; the NF4 "kernels" are the
// CPU codec, which produces the same bytes as the CUDA kernels.  Argument checks are the CUDA
// backend's (pool_checks.h).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "tiers/gpu/device_backend.h"
#include "tiers/gpu/device_identity.h"
#include "tiers/gpu/pool_checks.h"

namespace kvtier::gpu {
namespace {

// Pools are sized in steps of this, like the CUDA VMM granularity of current GPUs, so that the
// tier above sees the same rounding as on a GPU.
constexpr uint64_t kGranularity = 2ull << 20;

uint64_t round_up(uint64_t bytes) {
  return (bytes + kGranularity - 1) / kGranularity * kGranularity;
}

Status errno_error(const std::string& what) {
  return error(Errc::kIo, what + ": " + std::strerror(errno));
}

// Bytes handed out per emulated device, shared by the backend and its pools so that a pool
// may outlive neither but be destroyed in any order.
struct DeviceBudget {
  Mutex mu;
  std::vector<uint64_t> used GUARDED_BY(mu);
};

class EmulatedPool final : public DevicePool {
 public:
  EmulatedPool(std::shared_ptr<DeviceBudget> budget, int device, uint64_t size, int fd,
               std::byte* base)
      : budget_(std::move(budget)), device_(device), size_(size), fd_(fd), base_(base) {}
  ~EmulatedPool() override {
    ::munmap(base_, size_);
    ::close(fd_);
    MutexLock lock(budget_->mu);
    budget_->used[device_] -= size_;
  }

  int device() const override { return device_; }
  uint64_t size() const override { return size_; }
  HandleType handle_type() const override { return HandleType::kMemfd; }
  std::uintptr_t base() const override { return reinterpret_cast<std::uintptr_t>(base_); }

  Result<PoolExport> export_handle(bool writable) const override {
    // A new open file description with read-only access unless asked: a read-only importer
    // cannot map it writable.
    std::string path = "/proc/self/fd/" + std::to_string(fd_);
    int fd = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return errno_error("emulated gpu " + std::to_string(device_) + ": reopen " + path);
    PoolExport e;
    e.type = HandleType::kMemfd;
    e.device = device_;
    e.bytes = size_;
    e.fd = fd;
    e.writable = writable;
    return e;
  }

  Status write(uint64_t offset, std::span<const std::byte> src) override {
    if (Status st = check_range("write", device_, offset, src.size(), size_); !st) return st;
    if (!src.empty()) std::memcpy(base_ + offset, src.data(), src.size());
    return Status::ok();
  }

  Status copy_from(DevicePool& src, uint64_t src_offset, uint64_t dst_offset,
                   uint64_t bytes) override {
    auto* from = dynamic_cast<EmulatedPool*>(&src);
    if (from == nullptr)
      return error(Errc::kInvalidArgument, "emulated gpu: copy from a pool of another backend");
    if (Status st =
            check_copy(device_, src_offset, from->size_, dst_offset, size_, bytes, from == this);
        !st)
      return st;
    if (bytes > 0) std::memcpy(base_ + dst_offset, from->base_ + src_offset, bytes);
    return Status::ok();
  }

  Status read(uint64_t offset, std::span<std::byte> dst) override {
    if (Status st = check_range("read", device_, offset, dst.size(), size_); !st) return st;
    if (!dst.empty()) std::memcpy(dst.data(), base_ + offset, dst.size());
    return Status::ok();
  }

  Status dequantize_into(std::span<const std::byte> encoded, DType out_dtype,
                         uint64_t offset) override {
    auto h = check_dequantize(encoded, out_dtype, offset, device_, size_);
    if (!h) return h.status();
    const uint64_t out = h->params.rows * h->params.cols * dtype_size(out_dtype);
    return nf4::decode(encoded, out_dtype, {base_ + offset, out});
  }

  // The work is done here; the slot completes at once, through the handler, like a GPU's.
  AsyncBatch dequantize_batch_async(std::span<const DequantizeOp> ops) override {
    AsyncBatch r{dequantize_batch(ops), 0, 0};
    std::function<void(uint64_t)> handler;
    {
      MutexLock lock(events_mu_);
      if (!handler_) return r;
      handler = handler_;
      r.event = static_cast<uint32_t>(next_ticket_ % kPoolEvents + 1);
      r.ticket = ++next_ticket_;
    }
    handler(r.ticket);
    return r;
  }

  void set_event_handler(std::function<void(uint64_t)> handler) override {
    MutexLock lock(events_mu_);
    handler_ = std::move(handler);
  }

  Status quantize_from(const nf4::Params& p, uint64_t offset, std::span<std::byte> dst) override {
    auto enc = check_quantize(p, offset, dst.size(), device_, size_);
    if (!enc) return enc.status();
    const uint64_t src = p.rows * p.cols * dtype_size(p.dtype);
    return nf4::encode(p, {base_ + offset, src}, dst.first(*enc));
  }

 private:
  // Constant after construction.
  const std::shared_ptr<DeviceBudget> budget_;
  const int device_;
  const uint64_t size_;
  const int fd_;  // the memfd, read-write
  std::byte* const base_;
  Mutex events_mu_;
  std::function<void(uint64_t)> handler_ GUARDED_BY(events_mu_);
  uint64_t next_ticket_ GUARDED_BY(events_mu_) = 0;
};

class EmulationBackend final : public DeviceBackend {
 public:
  // Each device holds device_bytes rounded up to the granularity, so a pool of exactly
  // device_bytes always fits.
  EmulationBackend(int devices, uint64_t device_bytes)
      : device_bytes_(round_up(device_bytes)), budget_(std::make_shared<DeviceBudget>()) {
    budget_->used.assign(devices > 0 ? devices : 0, 0);
    report_.driver = true;
    for (int i = 0; i < devices; ++i) {
      DeviceInfo d;
      d.index = i;
      d.name = "emulated device " + std::to_string(i);
      d.uuid = emulated_device_uuid(i);
      d.total_bytes = device_bytes_;
      report_.devices.push_back(d);
    }
    report_.message = "host emulation: " + std::to_string(devices) +
                      (devices == 1 ? " device x " : " devices x ") +
                      std::to_string(device_bytes_ >> 20) +
                      " MiB of shared host memory (no GPU used)";
  }

  BackendKind kind() const override { return BackendKind::kEmulation; }
  const char* name() const override { return "emulation"; }
  const ProbeReport& probe() const override { return report_; }
  // Host memory is directly addressable here: nothing to register.
  Status register_host(std::span<std::byte>) override { return Status::ok(); }

  Result<std::unique_ptr<DevicePool>> create_pool(int device, uint64_t bytes,
                                                  HandleType handle) override {
    const std::string who = "emulated gpu " + std::to_string(device);
    if (device < 0 || device >= static_cast<int>(report_.devices.size())) {
      return error(Errc::kUnavailable, who + ": no such device (" +
                                           std::to_string(report_.devices.size()) +
                                           " emulated devices)");
    }
    if (handle != HandleType::kMemfd) {
      return error(Errc::kUnavailable, who + ": handle type " + handle_type_name(handle) +
                                           " needs a GPU; the emulation exports memfd only");
    }
    if (bytes == 0) return error(Errc::kInvalidArgument, who + ": pool of 0 bytes");
    const uint64_t size = bytes > device_bytes_ ? bytes : round_up(bytes);  // no overflow
    {
      MutexLock lock(budget_->mu);
      if (size > device_bytes_ - budget_->used[device]) {
        return error(Errc::kNoSpace, who + ": pool of " + std::to_string(size >> 20) +
                                         " MiB does not fit (" +
                                         std::to_string(budget_->used[device] >> 20) + " of " +
                                         std::to_string(device_bytes_ >> 20) + " MiB in use)");
      }
      budget_->used[device] += size;
    }
    auto pool = map_pool(device, size);
    if (!pool) {
      MutexLock lock(budget_->mu);
      budget_->used[device] -= size;
    }
    return pool;
  }

 private:
  Result<std::unique_ptr<DevicePool>> map_pool(int device, uint64_t size) {
    const std::string who = "emulated gpu " + std::to_string(device);
    const std::string name = "kvtier-emulated-gpu" + std::to_string(device);
    int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
    if (fd < 0) return errno_error(who + ": memfd_create");
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      Status st = errno_error(who + ": ftruncate to " + std::to_string(size) + " bytes");
      ::close(fd);
      return st;
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      Status st = errno_error(who + ": mmap");
      ::close(fd);
      return st;
    }
    return std::unique_ptr<DevicePool>(
        new EmulatedPool(budget_, device, size, fd, static_cast<std::byte*>(p)));
  }

  // Constant after construction.
  const uint64_t device_bytes_;
  const std::shared_ptr<DeviceBudget> budget_;
  ProbeReport report_;
};

}  // namespace

std::unique_ptr<DeviceBackend> make_emulation_backend(int devices, uint64_t device_bytes) {
  return std::make_unique<EmulationBackend>(devices, device_bytes);
}

}  // namespace kvtier::gpu
