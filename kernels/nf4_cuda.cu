// NF4 CUDA kernels: one __global__ wrapper around the batch body of nf4_cuda_batch.h, and the
// executor its sequences run on.  Error values go back as ints; nf4_cuda.cpp turns them into
// Status.
#include <cuda_runtime.h>

#include "kernels/nf4_cuda_batch.h"
#include "kernels/nf4_cuda_launch.h"

namespace kvtier::nf4::cuda::detail {
namespace {

// One kernel for every step of a batch; the step and the ops are in its parameters, which
// __grid_constant__ keeps in the constant bank (no per-thread copy).
__global__ void batch_kernel(const __grid_constant__ dev::BatchParams p) {
  dev::batch_thread(p, blockIdx.x, blockDim.x, threadIdx.x);
}

// The executor of nf4_cuda_batch.h's sequences on a stream.  Records the first failure;
// later calls are skipped once one failed.
struct Cuda {
  cudaStream_t s;
  LaunchResult r;

  bool run(cudaError_t e, const char* where) {
    if (r.cuda_error == 0 && e != cudaSuccess) {
      r.cuda_error = static_cast<int>(e);
      r.where = where;
    }
    return r.cuda_error == 0;
  }
  bool ok() const { return r.cuda_error == 0; }
  void fail_too_large() { run(cudaErrorInvalidValue, "batch grid"); }
  void* alloc(uint64_t bytes) {
    void* p = nullptr;
    return run(cudaMallocAsync(&p, bytes, s), "cudaMallocAsync") ? p : nullptr;
  }
  void zero(void* p, uint64_t bytes) {
    if (ok()) run(cudaMemsetAsync(p, 0, bytes, s), "cudaMemsetAsync");
  }
  void download(void* dst, const void* src, uint64_t bytes) {
    if (ok()) run(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), "cudaMemcpyAsync");
  }
  void launch(const dev::BatchParams& p, uint32_t blocks) {
    if (!ok()) return;
    batch_kernel<<<blocks, dev::kThreadsPerBlock, 0, s>>>(p);
    run(cudaGetLastError(), "nf4 batch kernel");
  }
  // Also after a failure: the allocation is freed in stream order.
  void release(void* p) { run(cudaFreeAsync(p, s), "cudaFreeAsync"); }
  bool sync() { return run(cudaStreamSynchronize(s), "cudaStreamSynchronize"); }
};

}  // namespace

LaunchResult encode_batch(const std::vector<dev::CodecArgs>& ops, const uint8_t* headers,
                          uint32_t* bad, void* stream) {
  Cuda x{static_cast<cudaStream_t>(stream), {}};
  dev::encode_batch(x, ops, headers, bad);
  return x.r;
}

LaunchResult decode_batch(const std::vector<dev::CodecArgs>& ops, void* stream) {
  Cuda x{static_cast<cudaStream_t>(stream), {}};
  dev::decode_batch(x, ops);
  return x.r;
}

LaunchResult device_count(int* count) {
  *count = 0;
  Cuda x{nullptr, {}};
  x.run(cudaGetDeviceCount(count), "cudaGetDeviceCount");
  return x.r;
}

const char* error_string(int cuda_error) {
  return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

}  // namespace kvtier::nf4::cuda::detail
