// Client-side import of CUDA pools.  kVmmFd: the allocation is imported from the fd, mapped
// into a range reserved here and made readable (only) by the device it lives on, which the
// driver names in this process's own device numbering.  kCudaIpc: cudaIpcOpenMemHandle, which
// maps read-write (the legacy API has no read-only mode).
#include <cstring>
#include <string>
#include <vector>

#include "tiers/gpu/cuda_api.h"
#include "tiers/gpu/cuda_import.h"
#include "tiers/gpu/device_copy.h"
#include "tiers/gpu/device_identity.h"

namespace kvtier::gpu {
namespace {

class VmmImport final : public ImportedPool {
 public:
  VmmImport(const cuda::DriverApi& api, int device) : api_(api), device_(device) {}
  ~VmmImport() override {
    if (mapped_) api_.mem_unmap(ptr_, size_);
    if (ptr_ != 0) api_.mem_address_free(ptr_, size_);
    if (handle_ != 0) api_.mem_release(handle_);
  }
  std::uintptr_t base() const override { return static_cast<std::uintptr_t>(ptr_); }
  uint64_t size() const override { return size_; }
  int device() const override { return device_; }

  Status map(int fd, uint64_t bytes, bool writable) {
    const std::string who = "import of vmm gpu " + std::to_string(device_) + " pool";
    CUresult r = api_.mem_import_from_shareable_handle(
        &handle_, reinterpret_cast<void*>(static_cast<std::uintptr_t>(fd)),
        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (r != CUDA_SUCCESS) return cuda::to_status(who + ": cuMemImportFromShareableHandle", r);
    CUmemAllocationProp prop;
    std::memset(&prop, 0, sizeof prop);
    r = api_.mem_get_allocation_properties_from_handle(&prop, handle_);
    if (r != CUDA_SUCCESS)
      return cuda::to_status(who + ": cuMemGetAllocationPropertiesFromHandle", r);
    size_t granularity = 0;
    r = api_.mem_get_allocation_granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r != CUDA_SUCCESS) return cuda::to_status(who + ": cuMemGetAllocationGranularity", r);
    if (granularity == 0 || bytes % granularity != 0) {
      return error(Errc::kInvalidArgument, who + ": size " + std::to_string(bytes) +
                                               " is not a multiple of the granularity " +
                                               std::to_string(granularity));
    }
    r = api_.mem_address_reserve(&ptr_, bytes, granularity, 0, 0);
    if (r != CUDA_SUCCESS) return cuda::to_status(who + ": cuMemAddressReserve", r);
    size_ = bytes;
    r = api_.mem_map(ptr_, bytes, 0, handle_, 0);
    if (r != CUDA_SUCCESS) return cuda::to_status(who + ": cuMemMap", r);
    mapped_ = true;
    CUmemAccessDesc access;
    std::memset(&access, 0, sizeof access);
    access.location = prop.location;  // the owning device, as numbered in this process
    access.flags = writable ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
    r = api_.mem_set_access(ptr_, bytes, &access, 1);
    if (r != CUDA_SUCCESS) return cuda::to_status(who + ": cuMemSetAccess", r);
    return Status::ok();
  }

 private:
  const cuda::DriverApi& api_;
  const int device_;
  CUmemGenericAllocationHandle handle_ = 0;
  CUdeviceptr ptr_ = 0;
  uint64_t size_ = 0;
  bool mapped_ = false;
};

class IpcImport final : public ImportedPool {
 public:
  IpcImport(void* ptr, uint64_t size, int device) : ptr_(ptr), size_(size), device_(device) {}
  ~IpcImport() override { cudaIpcCloseMemHandle(ptr_); }
  std::uintptr_t base() const override { return reinterpret_cast<std::uintptr_t>(ptr_); }
  uint64_t size() const override { return size_; }
  int device() const override { return device_; }

 private:
  void* const ptr_;
  const uint64_t size_;
  const int device_;
};

}  // namespace

Result<std::unique_ptr<ImportedPool>> import_cuda_pool(const PoolExport& e) {
  if (e.type == HandleType::kVmmFd) {
    auto api = cuda::driver_api();
    if (!api) {
      return error(api.status().code(), "import of vmm gpu " + std::to_string(e.device) +
                                            " pool: " + api.status().message());
    }
    // The VMM calls run in the runtime's primary context of this thread's current device;
    // this creates it if the process has not used CUDA yet.
    if (Status st = cuda::to_status(
            "import of vmm gpu " + std::to_string(e.device) + " pool: cudaFree(nullptr)",
            cudaFree(nullptr));
        !st) {
      return st;
    }
    auto pool = std::make_unique<VmmImport>(**api, e.device);
    if (Status st = pool->map(e.fd, e.bytes, e.writable); !st)
      return st;  // ~VmmImport undoes the rest
    return std::unique_ptr<ImportedPool>(std::move(pool));
  }
  if (e.type == HandleType::kCudaIpc) {
    cudaIpcMemHandle_t h;
    static_assert(sizeof h == sizeof e.ipc_handle);
    std::memcpy(&h, e.ipc_handle.data(), sizeof h);
    void* p = nullptr;
    cudaError_t r = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
    if (r != cudaSuccess) {
      return cuda::to_status(
          "import of ipc gpu " + std::to_string(e.device) + " pool: cudaIpcOpenMemHandle", r);
    }
    return std::unique_ptr<ImportedPool>(new IpcImport(p, e.bytes, e.device));
  }
  return error(Errc::kInvalidArgument,
               std::string("not a CUDA pool handle: ") + handle_type_name(e.type));
}

Status cuda_copy_batch(std::span<const CopyOp> ops) {
  for (const CopyOp& op : ops) {
    if (op.bytes == 0) continue;
    if (Status st = cuda::to_status(
            "cudaMemcpyAsync",
            cudaMemcpyAsync(op.dst, op.src, op.bytes, cudaMemcpyDefault, cudaStreamPerThread));
        !st) {
      (void)cudaStreamSynchronize(cudaStreamPerThread);  // nothing left queued on failure
      return st;
    }
  }
  return cuda::to_status("cudaStreamSynchronize", cudaStreamSynchronize(cudaStreamPerThread));
}

Result<void*> open_ipc_event(const std::array<std::byte, 64>& handle, int device) {
  cudaIpcEventHandle_t h;
  static_assert(sizeof h == 64);
  std::memcpy(&h, handle.data(), sizeof h);
  if (Status st = cuda::to_status("cudaSetDevice", cudaSetDevice(device)); !st) return st;
  cudaEvent_t e = nullptr;
  if (Status st = cuda::to_status("cudaIpcOpenEventHandle", cudaIpcOpenEventHandle(&e, h)); !st)
    return st;
  return static_cast<void*>(e);
}

Status wait_ipc_event(void* event, void* stream) {
  auto e = static_cast<cudaEvent_t>(event);
  if (stream == nullptr) return cuda::to_status("cudaEventSynchronize", cudaEventSynchronize(e));
  return cuda::to_status("cudaStreamWaitEvent",
                         cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), e, 0));
}

void close_ipc_event(void* event) {
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

Result<std::vector<DeviceUuid>> cuda_device_uuids() {
  int count = 0;
  if (Status st = cuda::to_status("cudaGetDeviceCount", cudaGetDeviceCount(&count)); !st) return st;
  std::vector<DeviceUuid> out(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    // The runtime initialises the driver for this; it creates no context.
    cudaDeviceProp prop;
    if (Status st = cuda::to_status("cudaGetDeviceProperties(" + std::to_string(i) + ")",
                                    cudaGetDeviceProperties(&prop, i));
        !st)
      return st;
    std::memcpy(out[i].data(), prop.uuid.bytes, out[i].size());
  }
  return out;
}

}  // namespace kvtier::gpu
