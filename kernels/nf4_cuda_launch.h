// The boundary between the C++20 launcher (nf4_cuda.cpp) and the C++17 CUDA translation unit
// (nf4_cuda.cu).  No CUDA types: streams are void*, errors are cudaError_t values as int.
#pragma once

#include <vector>

#include "kernels/nf4_cuda_kernels.h"

namespace kvtier::nf4::cuda::detail {

struct LaunchResult {
  int cuda_error = 0;      // cudaError_t of the first failing call, 0 if none
  const char* where = "";  // which call failed
};

// Runs dev::encode_batch (nf4_cuda_batch.h) on `stream`: headers holds dev::kHeaderBytes per
// op, bad[i] gets op i's flag (0 good, 1 NaN/Inf, 2 double-quant overflow).  Synchronises.
LaunchResult encode_batch(const std::vector<dev::CodecArgs>& ops, const uint8_t* headers,
                          uint32_t* bad, void* stream);

// Queues dev::decode_batch on `stream`; does not synchronise.
LaunchResult decode_batch(const std::vector<dev::CodecArgs>& ops, void* stream);

LaunchResult device_count(int* count);
const char* error_string(int cuda_error);

}  // namespace kvtier::nf4::cuda::detail
