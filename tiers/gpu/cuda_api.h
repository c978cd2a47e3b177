// The CUDA driver API entry points the GPU tier uses (VMM), resolved at run time through the
// runtime's cudaGetDriverEntryPointByVersion, so nothing links libcuda.so and the daemon and
// libkvtier start on hosts without a driver.  And the one place where CUDA error codes, of
// the runtime and of the driver, become Status.
//
// Compiled only with CUDA (KVTIER_HAVE_CUDA).  Thread-safe.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <string_view>

#include "kvtier/status.h"

namespace kvtier::gpu::cuda {

struct DriverApi {
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetAttribute_v2000 device_get_attribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 mem_get_allocation_granularity = nullptr;
  PFN_cuMemCreate_v10020 mem_create = nullptr;
  PFN_cuMemRelease_v10020 mem_release = nullptr;
  PFN_cuMemAddressReserve_v10020 mem_address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 mem_address_free = nullptr;
  PFN_cuMemMap_v10020 mem_map = nullptr;
  PFN_cuMemUnmap_v10020 mem_unmap = nullptr;
  PFN_cuMemSetAccess_v10020 mem_set_access = nullptr;
  PFN_cuMemGetAccess_v10020 mem_get_access = nullptr;
  PFN_cuMemExportToShareableHandle_v10020 mem_export_to_shareable_handle = nullptr;
  PFN_cuMemImportFromShareableHandle_v10020 mem_import_from_shareable_handle = nullptr;
  PFN_cuMemGetAllocationPropertiesFromHandle_v10020 mem_get_allocation_properties_from_handle =
      nullptr;
};

// The entry points, resolved once per process; the Status says why not (no driver, a driver
// without one of them).
Result<const DriverApi*> driver_api();

// "what: cudaErrorInsufficientDriver (CUDA driver version is insufficient ...)" with the Errc
// that fits: no driver/device/support -> kUnavailable, out of memory -> kNoSpace, invalid
// value/device -> kInvalidArgument, anything else -> kInternal.  Ok for cudaSuccess.
Status to_status(std::string_view what, cudaError_t e);
Status to_status(std::string_view what, CUresult r);

}  // namespace kvtier::gpu::cuda
