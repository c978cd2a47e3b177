// The NF4 CUDA API in a build without the CUDA toolkit: nothing is available.
#include "kernels/nf4_cuda.h"

namespace kvtier::nf4::cuda {

bool available() {
  return false;
}

Status quantize(const Params&, const void*, void*, void*) {
  return error(Errc::kUnavailable, "nf4 cuda: built without CUDA");
}

Status dequantize(const Header&, const void*, DType, void*, void*) {
  return error(Errc::kUnavailable, "nf4 cuda: built without CUDA");
}

}  // namespace kvtier::nf4::cuda
