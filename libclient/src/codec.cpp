// Decoding leased tensors and the public NF4 entry points, over kernels/nf4.h.
#include <cstring>

#include "kernels/nf4.h"
#include "kvtier/client.h"

namespace kvtier {
namespace {
uint64_t elements_of(const TensorView& t) {
  uint64_t n = 1;
  for (uint64_t d : t.shape) n *= d;
  return n;
}
}  // namespace

uint64_t decoded_bytes(const TensorView& t, DType out) {
  return elements_of(t) * dtype_size(out);
}

Status decode(const TensorView& t, DType out, std::span<std::byte> dst) {
  if (!t.host_accessible)
    return error(Errc::kInvalidArgument, "tensor '" + t.name + "' is in the memory of GPU " +
                                             std::to_string(t.device) +
                                             ": copy it with CUDA (it is stored raw)");
  const uint64_t need = decoded_bytes(t, out);
  if (dst.size() < need)
    return error(Errc::kInvalidArgument, "tensor '" + t.name + "' needs " + std::to_string(need) +
                                             " bytes, the buffer has " +
                                             std::to_string(dst.size()));
  switch (t.codec) {
    case Codec::kRaw:
      if (out != t.dtype)
        return error(Errc::kInvalidArgument, std::string("tensor '") + t.name + "' is stored " +
                                                 dtype_name(t.dtype) + ", not " + dtype_name(out));
      std::memcpy(dst.data(), t.data, need);
      return {};
    case Codec::kNf4: {
      auto h = nf4::parse_header({t.data, t.bytes});
      if (!h) return h.status();
      if (h->params.rows * h->params.cols != elements_of(t))
        return error(Errc::kCorrupt, "tensor '" + t.name + "': NF4 header disagrees with shape");
      return nf4::decode({t.data, t.bytes}, out, dst.first(need));
    }
  }
  return error(Errc::kCorrupt, "tensor '" + t.name + "' has an unknown codec");
}

uint64_t nf4_encoded_size(DType dtype, Nf4Layout layout, bool double_quant, uint64_t rows,
                          uint64_t cols) {
  return nf4::encoded_size(nf4::Params{dtype, layout, double_quant, rows, cols});
}

Status nf4_quantize(DType dtype, Nf4Layout layout, bool double_quant, uint64_t rows, uint64_t cols,
                    std::span<const std::byte> src, std::span<std::byte> dst) {
  return nf4::encode(nf4::Params{dtype, layout, double_quant, rows, cols}, src, dst);
}

Status nf4_dequantize(std::span<const std::byte> encoded, DType out, std::span<std::byte> dst) {
  return nf4::decode(encoded, out, dst);
}

}  // namespace kvtier
