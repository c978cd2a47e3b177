#include "tests/testing/device_read.h"

#include <cstring>
#include <string>

#if defined(KVTIER_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace kvtier::testing {

Result<std::vector<std::byte>> read_tensor(const TensorView& t) {
  std::vector<std::byte> out(t.bytes);
  if (t.host_accessible) {
    std::memcpy(out.data(), t.data, t.bytes);
    return out;
  }
#if defined(KVTIER_HAVE_CUDA)
  if (cudaError_t e = cudaSetDevice(t.device); e != cudaSuccess)
    return error(Errc::kUnavailable, std::string("cudaSetDevice: ") + cudaGetErrorString(e));
  if (cudaError_t e = cudaMemcpy(out.data(), t.data, t.bytes, cudaMemcpyDeviceToHost);
      e != cudaSuccess)
    return error(Errc::kIo, std::string("cudaMemcpy: ") + cudaGetErrorString(e));
  return out;
#else
  return error(Errc::kUnavailable, "device memory, and this build has no CUDA");
#endif
}

}  // namespace kvtier::testing
