// Reading a leased tensor's bytes wherever they live: host memory (and the GPU tier's host
// emulation) directly, CUDA device memory with cudaMemcpy.  For the GPU tier suites.
#pragma once

#include <cstddef>
#include <vector>

#include "kvtier/client.h"

namespace kvtier::testing {

// The stored bytes of `t`; fails (kUnavailable) for device memory in a build without CUDA.
Result<std::vector<std::byte>> read_tensor(const TensorView& t);

}  // namespace kvtier::testing
