#include "common/mutex.h"
#include "tiers/gpu/cuda_pool.h"

#include <fcntl.h>

#include <algorithm>
#include <array>
#include <functional>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "kernels/nf4_cuda.h"
#include "tiers/gpu/pool_checks.h"

namespace kvtier::gpu::cuda {

void HostRegistry::add(Range r) {
  MutexLock lock(mu_);
  ranges_.push_back(std::move(r));
}

std::uintptr_t HostRegistry::device_address(int device, const void* p, uint64_t n) const {
  const auto* b = static_cast<const std::byte*>(p);
  MutexLock lock(mu_);
  for (const Range& r : ranges_) {
    if (b >= r.host && n <= r.bytes && uint64_t(b - r.host) <= r.bytes - n &&
        size_t(device) < r.device_address.size() && r.device_address[device] != 0) {
      return r.device_address[device] + uint64_t(b - r.host);
    }
  }
  return 0;
}

std::vector<HostRegistry::Range> HostRegistry::take_all() {
  MutexLock lock(mu_);
  return std::exchange(ranges_, {});
}

namespace {

class CudaPool final : public DevicePool {
 public:
  CudaPool(std::shared_ptr<const HostRegistry> registry, int device, HandleType type,
           const DriverApi* api)
      : registry_(std::move(registry)), device_(device), type_(type), api_(api) {}
  ~CudaPool() override;

  Status allocate_vmm(uint64_t bytes);
  Status allocate_ipc(uint64_t bytes);
  Status create_stream();

  int device() const override { return device_; }
  uint64_t size() const override { return size_; }
  HandleType handle_type() const override { return type_; }
  std::uintptr_t base() const override { return static_cast<std::uintptr_t>(base_); }
  Result<PoolExport> export_handle(bool writable) const override;
  Status write(uint64_t offset, std::span<const std::byte> src) override;
  Status read(uint64_t offset, std::span<std::byte> dst) override;
  Status copy_from(DevicePool& src, uint64_t src_offset, uint64_t dst_offset,
                   uint64_t bytes) override;
  Status dequantize_into(std::span<const std::byte> encoded, DType out_dtype,
                         uint64_t offset) override;
  std::vector<Status> dequantize_batch(std::span<const DequantizeOp> ops) override;
  Status quantize_from(const nf4::Params& p, uint64_t offset, std::span<std::byte> dst) override;
  std::vector<Status> quantize_batch(std::span<const QuantizeOp> ops) override;
  AsyncBatch dequantize_batch_async(std::span<const DequantizeOp> ops) override;
  void set_event_handler(std::function<void(uint64_t)> handler) override;
  Status wait_event(uint32_t event) override;
  // A batch's work is done (a host function queued after its event): the slot is free again
  // and the handler is told.  Runs on a CUDA driver thread: no CUDA calls here.
  void event_done(uint32_t slot, uint64_t ticket);

 private:
  std::string who(const char* op) const { return "gpu " + std::to_string(device_) + " " + op; }
  Status set_device() const { return to_status(who("cudaSetDevice"), cudaSetDevice(device_)); }
  // Waits for everything queued on the stream: `st` if it failed, else the wait's result.
  Status finish(Status st, const char* op);
  // At least `bytes` of pinned, device-mapped host memory in staging_ (requires mu_).
  Status ensure_staging(uint64_t bytes);

  // Constant after construction (the allocation fields once allocate_*() returned).
  const std::shared_ptr<const HostRegistry> registry_;
  const int device_;
  const HandleType type_;
  const DriverApi* const api_;  // kVmmFd only
  uint64_t size_ = 0;
  CUdeviceptr base_ = 0;
  CUmemGenericAllocationHandle vmm_handle_ = 0;
  bool vmm_mapped_ = false;
  cudaIpcMemHandle_t ipc_handle_{};
  cudaStream_t stream_ = nullptr;
  // Interprocess ready events (slot i+1 at index i) and their exported handles.
  std::vector<cudaEvent_t> events_;
  std::vector<std::array<std::byte, 64>> event_handles_;

  Mutex events_mu_;  // never held across a CUDA call
  std::vector<uint32_t> free_events_ GUARDED_BY(events_mu_);
  std::function<void(uint64_t)> handler_ GUARDED_BY(events_mu_);
  uint64_t next_ticket_ GUARDED_BY(events_mu_) = 0;

  Mutex mu_;  // serialises use of stream_ and of the staging buffer
  std::byte* staging_ GUARDED_BY(mu_) = nullptr;
  std::uintptr_t staging_dev_ GUARDED_BY(mu_) = 0;
  uint64_t staging_bytes_ GUARDED_BY(mu_) = 0;
};

uint64_t round_up(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

constexpr uint64_t kNotStaged = ~uint64_t{0};

CudaPool::~CudaPool() {
  // Errors are ignored here: there is nobody to report them to and nothing left to undo.
  (void)cudaSetDevice(device_);
  if (stream_ != nullptr) {
    (void)cudaStreamSynchronize(stream_);  // queued host functions have run
    (void)cudaStreamDestroy(stream_);
  }
  for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
  if (staging_ != nullptr) (void)cudaFreeHost(staging_);
  if (type_ == HandleType::kVmmFd) {
    if (vmm_mapped_) api_->mem_unmap(base_, size_);
    if (base_ != 0) api_->mem_address_free(base_, size_);
    if (vmm_handle_ != 0) api_->mem_release(vmm_handle_);
  } else if (base_ != 0) {
    (void)cudaFree(reinterpret_cast<void*>(base_));
  }
}

Status CudaPool::allocate_vmm(uint64_t bytes) {
  if (Status st = set_device(); !st) return st;
  CUmemAllocationProp prop;
  std::memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device_;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t g = 0;
  CUresult r = api_->mem_get_allocation_granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r != CUDA_SUCCESS) return to_status(who("cuMemGetAllocationGranularity"), r);
  if (g == 0 || bytes > std::numeric_limits<uint64_t>::max() - g) {
    return error(Errc::kNoSpace, who("pool") + ": " + std::to_string(bytes) + " bytes");
  }
  const uint64_t size = round_up(bytes, g);
  r = api_->mem_create(&vmm_handle_, size, &prop, 0);
  if (r != CUDA_SUCCESS) {
    return to_status(who("cuMemCreate") + " of " + std::to_string(size >> 20) + " MiB", r);
  }
  r = api_->mem_address_reserve(&base_, size, g, 0, 0);
  if (r != CUDA_SUCCESS) return to_status(who("cuMemAddressReserve"), r);
  size_ = size;
  r = api_->mem_map(base_, size, 0, vmm_handle_, 0);
  if (r != CUDA_SUCCESS) return to_status(who("cuMemMap"), r);
  vmm_mapped_ = true;
  CUmemAccessDesc access;
  std::memset(&access, 0, sizeof access);
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  r = api_->mem_set_access(base_, size, &access, 1);
  if (r != CUDA_SUCCESS) return to_status(who("cuMemSetAccess"), r);
  return create_stream();
}

Status CudaPool::allocate_ipc(uint64_t bytes) {
  if (Status st = set_device(); !st) return st;
  constexpr uint64_t kStep = 2ull << 20;  // IPC shares whole 2 MiB pages anyway
  if (bytes > std::numeric_limits<uint64_t>::max() - kStep) {
    return error(Errc::kNoSpace, who("pool") + ": " + std::to_string(bytes) + " bytes");
  }
  const uint64_t size = round_up(bytes, kStep);
  void* p = nullptr;
  if (Status st = to_status(who("cudaMalloc") + " of " + std::to_string(size >> 20) + " MiB",
                            cudaMalloc(&p, size));
      !st) {
    return st;
  }
  base_ = reinterpret_cast<CUdeviceptr>(p);
  size_ = size;
  if (Status st = to_status(who("cudaIpcGetMemHandle"), cudaIpcGetMemHandle(&ipc_handle_, p));
      !st) {
    return st;
  }
  return create_stream();
}

Status CudaPool::create_stream() {
  Status st = to_status(who("cudaStreamCreateWithFlags"),
                        cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (!st) return st;
  // The ready events of async gets are optional: without them every promotion is synchronous.
  for (uint32_t i = 0; i < kPoolEvents; ++i) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventInterprocess) != cudaSuccess)
      break;
    events_.push_back(e);
    cudaIpcEventHandle_t h;
    static_assert(sizeof h == 64);
    if (cudaIpcGetEventHandle(&h, e) != cudaSuccess) break;
    std::array<std::byte, 64> bytes;
    std::memcpy(bytes.data(), &h, sizeof h);
    event_handles_.push_back(bytes);
  }
  if (event_handles_.size() != kPoolEvents) {  // all or none
    (void)cudaGetLastError();
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
    events_.clear();
    event_handles_.clear();
    return st;
  }
  MutexLock lock(events_mu_);
  for (uint32_t slot = kPoolEvents; slot >= 1; --slot) free_events_.push_back(slot);
  return st;
}

Result<PoolExport> CudaPool::export_handle(bool writable) const {
  PoolExport e;
  e.type = type_;
  e.device = device_;
  e.bytes = size_;
  e.writable = writable;
  e.events = event_handles_;
  if (type_ == HandleType::kCudaIpc) {
    static_assert(sizeof ipc_handle_ == sizeof e.ipc_handle);
    std::memcpy(e.ipc_handle.data(), &ipc_handle_, sizeof ipc_handle_);
    return e;
  }
  int fd = -1;
  CUresult r = api_->mem_export_to_shareable_handle(&fd, vmm_handle_,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
  if (r != CUDA_SUCCESS) return to_status(who("cuMemExportToShareableHandle"), r);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // never leaked into a child the daemon starts
  e.fd = fd;
  return e;
}

Status CudaPool::finish(Status st, const char* op) {
  cudaError_t e = cudaStreamSynchronize(stream_);
  if (!st) return error(st.code(), who(op) + ": " + st.message());
  return to_status(who(op) + ": cudaStreamSynchronize", e);
}

Status CudaPool::ensure_staging(uint64_t bytes) {
  if (bytes <= staging_bytes_) return Status::ok();
  const uint64_t want = round_up(std::max(bytes, 2 * staging_bytes_), 1ull << 20);
  if (staging_ != nullptr) (void)cudaFreeHost(staging_);
  staging_ = nullptr;
  staging_dev_ = 0;
  staging_bytes_ = 0;
  void* p = nullptr;
  Status st = to_status(who("cudaHostAlloc") + " of " + std::to_string(want >> 20) + " MiB staging",
                        cudaHostAlloc(&p, want, cudaHostAllocMapped | cudaHostAllocPortable));
  if (!st) return st;
  void* d = nullptr;
  st = to_status(who("cudaHostGetDevicePointer"), cudaHostGetDevicePointer(&d, p, 0));
  if (!st) {
    (void)cudaFreeHost(p);
    return st;
  }
  staging_ = static_cast<std::byte*>(p);
  staging_dev_ = reinterpret_cast<std::uintptr_t>(d);
  staging_bytes_ = want;
  return Status::ok();
}

Status CudaPool::write(uint64_t offset, std::span<const std::byte> src) {
  if (Status st = check_range("write", device_, offset, src.size(), size_); !st) return st;
  if (src.empty()) return Status::ok();
  MutexLock lock(mu_);
  if (Status st = set_device(); !st) return st;
  void* dst = reinterpret_cast<void*>(base_ + offset);
  return finish(to_status("cudaMemcpyAsync", cudaMemcpyAsync(dst, src.data(), src.size(),
                                                             cudaMemcpyHostToDevice, stream_)),
                "write");
}

Status CudaPool::read(uint64_t offset, std::span<std::byte> dst) {
  if (Status st = check_range("read", device_, offset, dst.size(), size_); !st) return st;
  if (dst.empty()) return Status::ok();
  MutexLock lock(mu_);
  if (Status st = set_device(); !st) return st;
  const void* src = reinterpret_cast<const void*>(base_ + offset);
  return finish(to_status("cudaMemcpyAsync", cudaMemcpyAsync(dst.data(), src, dst.size(),
                                                             cudaMemcpyDeviceToHost, stream_)),
                "read");
}

Status CudaPool::copy_from(DevicePool& src, uint64_t src_offset, uint64_t dst_offset,
                           uint64_t bytes) {
  auto* from = dynamic_cast<CudaPool*>(&src);
  if (from == nullptr)
    return error(Errc::kInvalidArgument, who("copy") + ": from a pool of another backend");
  if (Status st =
          check_copy(device_, src_offset, from->size_, dst_offset, size_, bytes, from == this);
      !st)
    return st;
  if (bytes == 0) return Status::ok();
  MutexLock lock(mu_);
  if (Status st = set_device(); !st) return st;
  void* dst = reinterpret_cast<void*>(base_ + dst_offset);
  const void* s = reinterpret_cast<const void*>(from->base_ + src_offset);
  const cudaError_t e = from->device_ == device_
                            ? cudaMemcpyAsync(dst, s, bytes, cudaMemcpyDeviceToDevice, stream_)
                            : cudaMemcpyPeerAsync(dst, device_, s, from->device_, bytes, stream_);
  return finish(to_status("cudaMemcpyAsync", e), "copy");
}

Status CudaPool::dequantize_into(std::span<const std::byte> encoded, DType out_dtype,
                                 uint64_t offset) {
  const DequantizeOp op{encoded, out_dtype, offset};
  return dequantize_batch(std::span(&op, 1)).front();
}

std::vector<Status> CudaPool::dequantize_batch(std::span<const DequantizeOp> ops) {
  std::vector<Status> out(ops.size());
  std::vector<nf4::Header> headers(ops.size());
  std::vector<uint64_t> staged_at(ops.size(), kNotStaged);  // outside registered memory
  std::vector<size_t> valid;
  uint64_t staged = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    auto h = check_dequantize(ops[i].encoded, ops[i].out_dtype, ops[i].offset, device_, size_);
    if (!h) {
      out[i] = h.status();
      continue;
    }
    headers[i] = *h;
    valid.push_back(i);
    const std::uintptr_t in =
        registry_->device_address(device_, ops[i].encoded.data(), h->total_size);
    if (in == 0 || in % 16 != 0) {
      staged_at[i] = staged;
      staged += round_up(h->total_size, 16);
    }
  }
  if (valid.empty()) return out;
  MutexLock lock(mu_);
  Status ready = set_device();
  if (ready && staged > 0) ready = ensure_staging(staged);
  if (!ready) {
    for (size_t i : valid) out[i] = ready;
    return out;
  }
  std::vector<nf4::cuda::DecodeOp> batch;
  for (size_t i : valid) {
    std::uintptr_t in = 0;
    if (staged_at[i] != kNotStaged) {
      std::memcpy(staging_ + staged_at[i], ops[i].encoded.data(), headers[i].total_size);
      in = staging_dev_ + staged_at[i];
    } else {
      in = registry_->device_address(device_, ops[i].encoded.data(), headers[i].total_size);
    }
    batch.push_back({headers[i], reinterpret_cast<const void*>(in), ops[i].out_dtype,
                     reinterpret_cast<void*>(base_ + ops[i].offset)});
  }
  const std::vector<Status> queued = nf4::cuda::dequantize_batch(batch, stream_);
  const Status done = finish(Status::ok(), "nf4 dequantize");
  for (size_t k = 0; k < valid.size(); ++k)
    out[valid[k]] =
        !queued[k] ? error(queued[k].code(), who("nf4 dequantize") + ": " + queued[k].message())
                   : done;
  return out;
}

namespace {

struct EventDone {
  CudaPool* pool;
  uint32_t slot;
  uint64_t ticket;
};

void CUDART_CB on_event_done(void* p) {
  auto* done = static_cast<EventDone*>(p);
  done->pool->event_done(done->slot, done->ticket);
  delete done;
}

}  // namespace

void CudaPool::set_event_handler(std::function<void(uint64_t)> handler) {
  MutexLock lock(events_mu_);
  handler_ = std::move(handler);
}

Status CudaPool::wait_event(uint32_t event) {
  if (event == 0 || event > events_.size())
    return error(Errc::kInvalidArgument, who("wait") + ": no event " + std::to_string(event));
  if (Status st = set_device(); !st) return st;
  return to_status(who("cudaEventSynchronize"), cudaEventSynchronize(events_[event - 1]));
}

void CudaPool::event_done(uint32_t slot, uint64_t ticket) {
  std::function<void(uint64_t)> handler;
  {
    MutexLock lock(events_mu_);
    free_events_.push_back(slot);  // re-recording it later only makes a late waiter wait longer
    handler = handler_;
  }
  if (handler) handler(ticket);
}

AsyncBatch CudaPool::dequantize_batch_async(std::span<const DequantizeOp> ops) {
  std::vector<Status> out(ops.size());
  std::vector<nf4::cuda::DecodeOp> batch;
  std::vector<size_t> valid;
  for (size_t i = 0; i < ops.size(); ++i) {
    auto h = check_dequantize(ops[i].encoded, ops[i].out_dtype, ops[i].offset, device_, size_);
    if (!h) {
      out[i] = h.status();
      continue;
    }
    const std::uintptr_t in =
        registry_->device_address(device_, ops[i].encoded.data(), h->total_size);
    if (in == 0 || in % 16 != 0) return {dequantize_batch(ops), 0, 0};  // staged: not async
    batch.push_back({*h, reinterpret_cast<const void*>(in), ops[i].out_dtype,
                     reinterpret_cast<void*>(base_ + ops[i].offset)});
    valid.push_back(i);
  }
  if (valid.empty()) return {std::move(out), 0, 0};
  uint32_t slot = 0;
  uint64_t ticket = 0;
  {
    MutexLock lock(events_mu_);
    if (!handler_ || free_events_.empty()) return {dequantize_batch(ops), 0, 0};
    slot = free_events_.back();
    free_events_.pop_back();
    ticket = ++next_ticket_;
  }
  MutexLock lock(mu_);
  Status st = set_device();
  std::vector<Status> queued =
      st ? nf4::cuda::dequantize_batch(batch, stream_) : std::vector<Status>(batch.size(), st);
  if (st) st = to_status(who("cudaEventRecord"), cudaEventRecord(events_[slot - 1], stream_));
  auto* done = new EventDone{this, slot, ticket};
  if (st)
    st = to_status(who("cudaLaunchHostFunc"), cudaLaunchHostFunc(stream_, on_event_done, done));
  if (!st) {  // nothing will complete the slot: wait here instead
    delete done;
    const Status fin = finish(st, "nf4 dequantize");
    {
      MutexLock events(events_mu_);
      free_events_.push_back(slot);
    }
    for (size_t k = 0; k < valid.size(); ++k) out[valid[k]] = queued[k] ? fin : queued[k];
    return {std::move(out), 0, 0};
  }
  for (size_t k = 0; k < valid.size(); ++k)
    out[valid[k]] =
        queued[k] ? Status::ok()
                  : error(queued[k].code(), who("nf4 dequantize") + ": " + queued[k].message());
  return {std::move(out), slot, ticket};
}

Status CudaPool::quantize_from(const nf4::Params& p, uint64_t offset, std::span<std::byte> dst) {
  const QuantizeOp op{p, offset, dst};
  return quantize_batch(std::span(&op, 1)).front();
}

std::vector<Status> CudaPool::quantize_batch(std::span<const QuantizeOp> ops) {
  std::vector<Status> out(ops.size());
  std::vector<uint64_t> bytes(ops.size());
  std::vector<uint64_t> staged_at(ops.size(), kNotStaged);  // outside registered memory
  std::vector<size_t> valid;
  uint64_t staged = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    auto enc = check_quantize(ops[i].params, ops[i].offset, ops[i].dst.size(), device_, size_);
    if (!enc) {
      out[i] = enc.status();
      continue;
    }
    bytes[i] = *enc;
    valid.push_back(i);
    const std::uintptr_t to = registry_->device_address(device_, ops[i].dst.data(), *enc);
    if (to == 0 || to % 16 != 0) {
      staged_at[i] = staged;
      staged += round_up(*enc, 16);
    }
  }
  if (valid.empty()) return out;
  MutexLock lock(mu_);
  Status ready = set_device();
  if (ready && staged > 0) ready = ensure_staging(staged);
  if (!ready) {
    for (size_t i : valid) out[i] = ready;
    return out;
  }
  std::vector<nf4::cuda::EncodeOp> batch;
  for (size_t i : valid) {
    const std::uintptr_t to = staged_at[i] != kNotStaged
                                  ? staging_dev_ + staged_at[i]
                                  : registry_->device_address(device_, ops[i].dst.data(), bytes[i]);
    batch.push_back({ops[i].params, reinterpret_cast<const void*>(base_ + ops[i].offset),
                     reinterpret_cast<void*>(to)});
  }
  const std::vector<Status> encoded = nf4::cuda::quantize_batch(batch, stream_);  // synchronises
  const Status done = finish(Status::ok(), "nf4 quantize");  // idle stream: staging is ours
  for (size_t k = 0; k < valid.size(); ++k) {
    const size_t i = valid[k];
    Status st = encoded[k] ? done : encoded[k];
    if (st && staged_at[i] != kNotStaged)
      std::memcpy(ops[i].dst.data(), staging_ + staged_at[i], bytes[i]);
    out[i] = st ? st : error(st.code(), who("nf4 quantize") + ": " + st.message());
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<DevicePool>> create_vmm_pool(const DriverApi& api,
                                                    std::shared_ptr<const HostRegistry> registry,
                                                    int device, uint64_t bytes) {
  auto pool = std::make_unique<CudaPool>(std::move(registry), device, HandleType::kVmmFd, &api);
  if (Status st = pool->allocate_vmm(bytes); !st) return st;  // ~CudaPool undoes the rest
  return std::unique_ptr<DevicePool>(std::move(pool));
}

Result<std::unique_ptr<DevicePool>> create_ipc_pool(std::shared_ptr<const HostRegistry> registry,
                                                    int device, uint64_t bytes) {
  auto pool =
      std::make_unique<CudaPool>(std::move(registry), device, HandleType::kCudaIpc, nullptr);
  if (Status st = pool->allocate_ipc(bytes); !st) return st;
  return std::unique_ptr<DevicePool>(std::move(pool));
}

}  // namespace kvtier::gpu::cuda
