// NF4 CUDA kernels: thin __global__ wrappers around the bodies in nf4_cuda_kernels.h, and
// the launch sequence.  Error values go back as ints; nf4_cuda.cpp turns them into Status.
#include <cuda_runtime.h>

#include "kernels/nf4_cuda_launch.h"

namespace kvtier::nf4::cuda::detail {
namespace {

#define KVTIER_KERNEL(name, body)                      \
  __global__ void name(dev::CodecArgs a) {             \
    dev::body(a, blockIdx.x, blockDim.x, threadIdx.x); \
  }

KVTIER_KERNEL(absmax_kernel, absmax_thread)
KVTIER_KERNEL(dq_sum_kernel, dq_sum_thread)
KVTIER_KERNEL(dq_offset_kernel, dq_offset_thread)
KVTIER_KERNEL(dq_quant_kernel, dq_quant_thread)
KVTIER_KERNEL(dq7_kernel, dq7_thread)
KVTIER_KERNEL(codes_kernel, codes_thread)
KVTIER_KERNEL(decode_kernel, decode_thread)

using Kernel = void (*)(dev::CodecArgs);

cudaError_t launch(Kernel k, uint64_t work, const dev::CodecArgs& a, cudaStream_t s) {
  uint64_t blocks = dev::grid_blocks(work);
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7FFFFFFFu) return cudaErrorInvalidValue;
  k<<<static_cast<unsigned>(blocks), dev::kThreadsPerBlock, 0, s>>>(a);
  return cudaGetLastError();
}

// Records the first failure; later steps are skipped once one fails.
struct Steps {
  LaunchResult r;
  bool run(cudaError_t e, const char* where) {
    if (r.cuda_error == 0 && e != cudaSuccess) {
      r.cuda_error = static_cast<int>(e);
      r.where = where;
    }
    return r.cuda_error == 0;
  }
  bool ok() const { return r.cuda_error == 0; }
};

}  // namespace

LaunchResult encode(dev::CodecArgs a, const void* header, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  // Scratch: scales (fp32), group sums (double), offset (fp32), flag (u32); 8-byte aligned.
  uint64_t sums_at = (a.num_blocks * 4 + 7) / 8 * 8;
  uint64_t tail_at = sums_at + a.num_groups * 8;
  void* scratch = nullptr;
  Steps st;
  if (!st.run(cudaMallocAsync(&scratch, tail_at + 8, s), "cudaMallocAsync")) return st.r;
  auto* base = static_cast<char*>(scratch);
  a.scales = reinterpret_cast<float*>(base);
  a.group_sums = reinterpret_cast<double*>(base + sums_at);
  a.offset = reinterpret_cast<float*>(base + tail_at);
  a.bad_input = reinterpret_cast<uint32_t*>(base + tail_at + 4);
  uint32_t bad = 0;
  st.run(cudaMemsetAsync(a.bad_input, 0, 4, s), "cudaMemsetAsync") &&
      st.run(launch(absmax_kernel, a.num_blocks, a, s), "absmax kernel") &&
      st.run(cudaMemcpyAsync(&bad, a.bad_input, 4, cudaMemcpyDefault, s), "cudaMemcpyAsync") &&
      st.run(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  if (st.ok() && bad != 0) st.r.bad_input = true;
  if (st.ok() && !st.r.bad_input) {
    // Header first: v1's offset kernel writes its dq_offset field.  The zeroed sections
    // before the codes take v2's 7-bit codes (ORed in) and the padding.
    st.run(cudaMemcpyAsync(a.encoded, header, a.header_size, cudaMemcpyDefault, s),
           "cudaMemcpyAsync") &&
        st.run(cudaMemsetAsync(a.encoded + a.header_size, 0, a.codes_offset - a.header_size, s),
               "cudaMemsetAsync");
    if (a.log_dq) {
      st.run(launch(dq7_kernel, a.num_groups, a, s), "dq7 kernel");
    } else if (a.double_quant) {
      st.run(launch(dq_sum_kernel, a.num_groups, a, s), "dq sum kernel") &&
          st.run(launch(dq_offset_kernel, 1, a, s), "dq offset kernel") &&
          st.run(launch(dq_quant_kernel, a.num_groups, a, s), "dq quant kernel");
    } else {
      st.run(cudaMemcpyAsync(a.encoded + a.scales_offset, a.scales, a.num_blocks * 4,
                             cudaMemcpyDefault, s),
             "cudaMemcpyAsync");
    }
    st.run(launch(codes_kernel, (a.n + 1) / 2, a, s), "codes kernel");
    if (a.double_quant && !a.log_dq &&
        st.ok()) {  // a read-back scale overflowed (fp32 near FLT_MAX)
      st.run(cudaMemcpyAsync(&bad, a.bad_input, 4, cudaMemcpyDefault, s), "cudaMemcpyAsync") &&
          st.run(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      if (st.ok() && bad != 0) {
        st.r.bad_input = true;
        st.run(cudaMemsetAsync(a.encoded, 0, a.header_size, s), "cudaMemsetAsync");  // not valid
      }
    }
  }
  st.run(cudaFreeAsync(scratch, s), "cudaFreeAsync");
  return st.r;
}

LaunchResult decode(const dev::CodecArgs& a, void* stream) {
  Steps st;
  st.run(launch(decode_kernel, (a.n + 1) / 2, a, static_cast<cudaStream_t>(stream)),
         "decode kernel");
  return st.r;
}

LaunchResult device_count(int* count) {
  Steps st;
  *count = 0;
  st.run(cudaGetDeviceCount(count), "cudaGetDeviceCount");
  return st.r;
}

const char* error_string(int cuda_error) {
  return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

}  // namespace kvtier::nf4::cuda::detail
