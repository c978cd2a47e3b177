// The NF4 CUDA API in a build without the CUDA toolkit: nothing is available.
#include "kernels/nf4_cuda.h"

namespace kvtier::nf4::cuda {
namespace {

Status unavailable() {
  return error(Errc::kUnavailable, "nf4 cuda: built without CUDA");
}

}  // namespace

bool available() {
  return false;
}

std::vector<Status> quantize_batch(std::span<const EncodeOp> ops, void*) {
  return std::vector<Status>(ops.size(), unavailable());
}

Status quantize(const Params&, const void*, void*, void*) {
  return unavailable();
}

std::vector<Status> dequantize_batch(std::span<const DecodeOp> ops, void*) {
  return std::vector<Status>(ops.size(), unavailable());
}

Status dequantize(const Header&, const void*, DType, void*, void*) {
  return unavailable();
}

}  // namespace kvtier::nf4::cuda
