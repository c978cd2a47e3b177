#include "tiers/gpu/cuda_api.h"

#include <string>

namespace kvtier::gpu::cuda {
namespace {

// The runtime and driver enums agree on the codes mapped below, so one table serves both.
static_assert(int(cudaErrorInvalidValue) == int(CUDA_ERROR_INVALID_VALUE));
static_assert(int(cudaErrorMemoryAllocation) == int(CUDA_ERROR_OUT_OF_MEMORY));
static_assert(int(cudaErrorStubLibrary) == int(CUDA_ERROR_STUB_LIBRARY));
static_assert(int(cudaErrorNoDevice) == int(CUDA_ERROR_NO_DEVICE));
static_assert(int(cudaErrorInvalidDevice) == int(CUDA_ERROR_INVALID_DEVICE));
static_assert(int(cudaErrorNotSupported) == int(CUDA_ERROR_NOT_SUPPORTED));
static_assert(int(cudaErrorSystemDriverMismatch) == int(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH));
static_assert(int(cudaErrorCompatNotSupportedOnDevice) ==
              int(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE));

Errc errc_of(int code) {
  switch (code) {
    case cudaErrorMemoryAllocation:
      return Errc::kNoSpace;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return Errc::kInvalidArgument;
    case cudaErrorInitializationError:  // = CUDA_ERROR_NOT_INITIALIZED
    case cudaErrorStubLibrary:
    case cudaErrorInsufficientDriver:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoDevice:
    case cudaErrorNotSupported:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return Errc::kUnavailable;
    default:
      return Errc::kInternal;
  }
}

Status make(std::string_view what, int code, const std::string& name, const char* text) {
  std::string msg(what);
  msg += ": " + name;
  if (text != nullptr && *text != '\0') msg += std::string(" (") + text + ")";
  return error(errc_of(code), std::move(msg));
}

// Fills one entry point, or says why it cannot.
template <typename Fn>
Status resolve(const char* symbol, Fn& fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  // 12.0: every symbol here has kept this ABI since its introduction (10.2 or earlier), and a
  // CUDA 13 runtime only runs on drivers newer than that.
  cudaError_t e = cudaGetDriverEntryPointByVersion(symbol, &p, 12000, cudaEnableDefault, &found);
  if (e != cudaSuccess) return to_status(std::string("cuda driver entry point ") + symbol, e);
  if (found != cudaDriverEntryPointSuccess || p == nullptr) {
    return error(Errc::kUnavailable,
                 std::string("the CUDA driver does not provide ") + symbol + " (too old?)");
  }
  fn = reinterpret_cast<Fn>(p);
  return Status::ok();
}

struct Loaded {
  DriverApi api;
  Status status;
};

Loaded load() {
  Loaded l;
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess || version == 0) {
    l.status =
        error(Errc::kUnavailable, "no CUDA driver (libcuda.so.1 is not installed or not loadable)");
    return l;
  }
  DriverApi& a = l.api;
  for (Status st :
       {resolve("cuGetErrorName", a.get_error_name), resolve("cuDeviceGet", a.device_get),
        resolve("cuDeviceGetAttribute", a.device_get_attribute),
        resolve("cuMemGetAllocationGranularity", a.mem_get_allocation_granularity),
        resolve("cuMemCreate", a.mem_create), resolve("cuMemRelease", a.mem_release),
        resolve("cuMemAddressReserve", a.mem_address_reserve),
        resolve("cuMemAddressFree", a.mem_address_free), resolve("cuMemMap", a.mem_map),
        resolve("cuMemUnmap", a.mem_unmap), resolve("cuMemSetAccess", a.mem_set_access),
        resolve("cuMemGetAccess", a.mem_get_access),
        resolve("cuMemExportToShareableHandle", a.mem_export_to_shareable_handle),
        resolve("cuMemImportFromShareableHandle", a.mem_import_from_shareable_handle),
        resolve("cuMemGetAllocationPropertiesFromHandle",
                a.mem_get_allocation_properties_from_handle)}) {
    if (!st) {
      l.status = st;
      break;
    }
  }
  return l;
}

}  // namespace

Result<const DriverApi*> driver_api() {
  static const Loaded loaded = load();  // thread-safe initialisation
  if (!loaded.status) return loaded.status;
  return &loaded.api;
}

Status to_status(std::string_view what, cudaError_t e) {
  if (e == cudaSuccess) return Status::ok();
  return make(what, e, cudaGetErrorName(e), cudaGetErrorString(e));
}

Status to_status(std::string_view what, CUresult r) {
  if (r == CUDA_SUCCESS) return Status::ok();
  const char* name = nullptr;
  if (auto api = driver_api(); api && (*api)->get_error_name) (*api)->get_error_name(r, &name);
  return make(what, r, name ? name : "CUresult " + std::to_string(int(r)), nullptr);
}

}  // namespace kvtier::gpu::cuda
