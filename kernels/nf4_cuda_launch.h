// The boundary between the C++20 launcher (nf4_cuda.cpp) and the C++17 CUDA translation unit
// (nf4_cuda.cu).  No CUDA types: streams are void*, errors are cudaError_t values as int.
#pragma once

#include "kernels/nf4_cuda_kernels.h"

namespace kvtier::nf4::cuda::detail {

struct LaunchResult {
  int cuda_error = 0;      // cudaError_t of the first failing call, 0 if none
  const char* where = "";  // which call failed
  bool bad_input = false;  // NaN/Inf input, or too large for double quantization
};

// Runs the encode pipeline on `stream`.  header points to the args.header_size host bytes at
// args.encoded (dq_offset is filled in on the device).  Synchronises once, after the absmax
// pass, to report bad input before anything is written to args.encoded.
LaunchResult encode(dev::CodecArgs args, const void* header, void* stream);

// Queues the decode kernel on `stream`; does not synchronise.
LaunchResult decode(const dev::CodecArgs& args, void* stream);

LaunchResult device_count(int* count);
const char* error_string(int cuda_error);

}  // namespace kvtier::nf4::cuda::detail
