// The CUDA DeviceBackend: the probe (driver, devices, VMM support), host registration and
// pool creation.  The pools themselves are in cuda_pool.cpp.  Only the CUDA runtime is linked
// (statically); driver API calls go through cuda_api.h, so a host without a driver gets a
// probe that says so instead of a daemon that does not start.
#include <cstdio>
#include <cstring>
#include <string>

#include "tiers/gpu/cuda_api.h"
#include "tiers/gpu/cuda_pool.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {
namespace {

std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", double(bytes) / double(1ull << 30));
  return buf;
}

// VMM with POSIX fd handles on `device`; false (with the reason in `why`) if not.
bool vmm_supported(int device, std::string& why) {
  auto api = cuda::driver_api();
  if (!api) {
    why = api.status().message();
    return false;
  }
  CUdevice dev = 0;
  int vmm = 0;
  int fd = 0;
  Status st = cuda::to_status("cuDeviceGet", (*api)->device_get(&dev, device));
  if (st) {
    st = cuda::to_status("cuDeviceGetAttribute",
                         (*api)->device_get_attribute(
                             &vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev));
  }
  if (st) {
    st = cuda::to_status(
        "cuDeviceGetAttribute",
        (*api)->device_get_attribute(
            &fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev));
  }
  if (!st) {
    why = st.message();
    return false;
  }
  why = !vmm ? "no VMM" : !fd ? "no POSIX fd handles" : "";
  return vmm && fd;
}

ProbeReport probe() {
  ProbeReport r;
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  (void)cudaDriverGetVersion(&r.driver_version);  // 0 when no driver is installed
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver && r.driver_version == 0) {
    r.message =
        "no CUDA driver (cudaErrorInsufficientDriver): libcuda.so.1 is not installed or "
        "not loadable, so no GPU tier";
    return r;
  }
  if (e == cudaErrorInsufficientDriver) {
    r.message = "CUDA driver " + version_string(r.driver_version) +
                " is older than this build's runtime " + version_string(runtime) +
                " (cudaErrorInsufficientDriver): update the driver";
    return r;
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    r.message = "CUDA driver " + version_string(r.driver_version) + " but no CUDA device visible" +
                " (check CUDA_VISIBLE_DEVICES and /dev/nvidia*)";
    return r;
  }
  if (e != cudaSuccess) {
    r.message = cuda::to_status("cudaGetDeviceCount", e).message();
    return r;
  }
  r.driver = true;
  r.message = "CUDA driver " + version_string(r.driver_version) + ", runtime " +
              version_string(runtime) + ": " + std::to_string(count) +
              (count == 1 ? " device: " : " devices: ");
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    DeviceInfo d;
    d.index = i;
    if (Status st = cuda::to_status("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, i));
        !st) {
      r.message += (i ? "; " : "") + std::to_string(i) + " unreadable (" + st.message() + ")";
      continue;
    }
    d.name = prop.name;
    std::memcpy(d.uuid.data(), prop.uuid.bytes, d.uuid.size());
    d.total_bytes = prop.totalGlobalMem;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    std::string why;
    d.vmm = vmm_supported(i, why);
    r.message += (i ? "; " : "") + std::to_string(i) + " " + d.name + " (" + gib(d.total_bytes) +
                 ", cc " + std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor) + ", " +
                 (d.vmm ? std::string("vmm") : "ipc only: " + why) + ")";
    r.devices.push_back(std::move(d));
  }
  return r;
}

class CudaBackend final : public DeviceBackend {
 public:
  explicit CudaBackend(ProbeReport report)
      : report_(std::move(report)), registry_(std::make_shared<cuda::HostRegistry>()) {}
  ~CudaBackend() override {
    for (const auto& r : registry_->take_all()) {
      (void)cudaHostUnregister(const_cast<std::byte*>(r.host));
    }
  }

  BackendKind kind() const override { return BackendKind::kCuda; }
  const char* name() const override { return "cuda"; }
  const ProbeReport& probe() const override { return report_; }

  Status register_host(std::span<std::byte> memory) override {
    if (memory.empty()) return error(Errc::kInvalidArgument, "cuda: register of 0 host bytes");
    Status st =
        cuda::to_status("cuda: cudaHostRegister of " + std::to_string(memory.size() >> 20) + " MiB",
                        cudaHostRegister(memory.data(), memory.size(),
                                         cudaHostRegisterMapped | cudaHostRegisterPortable));
    if (!st) return st;
    cuda::HostRegistry::Range range;
    range.host = memory.data();
    range.bytes = memory.size();
    range.device_address.assign(report_.devices.size(), 0);
    for (const DeviceInfo& d : report_.devices) {
      void* p = nullptr;
      st = cuda::to_status("cuda: cudaSetDevice", cudaSetDevice(d.index));
      if (st) {
        st = cuda::to_status("cuda: cudaHostGetDevicePointer on device " + std::to_string(d.index),
                             cudaHostGetDevicePointer(&p, memory.data(), 0));
      }
      if (!st) {
        (void)cudaHostUnregister(memory.data());
        return st;
      }
      range.device_address[d.index] = reinterpret_cast<std::uintptr_t>(p);
    }
    registry_->add(std::move(range));
    return Status::ok();
  }

  Result<std::unique_ptr<DevicePool>> create_pool(int device, uint64_t bytes,
                                                  HandleType handle) override {
    const std::string who = "cuda gpu " + std::to_string(device);
    const DeviceInfo* d = nullptr;
    for (const DeviceInfo& info : report_.devices) {
      if (info.index == device) d = &info;
    }
    if (d == nullptr) {
      return error(Errc::kUnavailable, who + ": no such usable device (" + report_.message + ")");
    }
    if (bytes == 0) return error(Errc::kInvalidArgument, who + ": pool of 0 bytes");
    switch (handle) {
      case HandleType::kVmmFd: {
        if (!d->vmm) {
          return error(Errc::kUnavailable, who + " (" + d->name +
                                               ") cannot export VMM fd handles; use gpu.handle = "
                                               "\"ipc\"");
        }
        auto api = cuda::driver_api();
        if (!api) return error(api.status().code(), who + ": " + api.status().message());
        return cuda::create_vmm_pool(**api, registry_, device, bytes);
      }
      case HandleType::kCudaIpc:
        return cuda::create_ipc_pool(registry_, device, bytes);
      case HandleType::kMemfd:
        break;
    }
    return error(Errc::kUnavailable, who + ": handle type " + handle_type_name(handle) +
                                         " is the host emulation's; use \"vmm\" or \"ipc\"");
  }

 private:
  // Constant after construction.
  const ProbeReport report_;
  const std::shared_ptr<cuda::HostRegistry> registry_;  // shared with the pools
};

}  // namespace

Result<std::unique_ptr<DeviceBackend>> make_cuda_backend() {
  ProbeReport report = probe();
  if (report.devices.empty()) return error(Errc::kUnavailable, report.message);
  return std::unique_ptr<DeviceBackend>(new CudaBackend(std::move(report)));
}

}  // namespace kvtier::gpu
