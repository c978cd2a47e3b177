// import_cuda_pool in a build without CUDA: CUDA handles cannot be opened here.
#include <string>

#include "tiers/gpu/cuda_import.h"

namespace kvtier::gpu {

Result<std::unique_ptr<ImportedPool>> import_cuda_pool(const PoolExport& e) {
  return error(Errc::kUnavailable, std::string("cannot import a gpu pool with handle type ") +
                                       handle_type_name(e.type) +
                                       ": kvtier was built without CUDA");
}

}  // namespace kvtier::gpu
