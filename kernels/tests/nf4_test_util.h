// Helpers shared by the NF4 tests: tensors in any float dtype, and codec round trips.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kvtier/types.h"
#include "kernels/nf4.h"

namespace kvtier::nf4::testing {

using Bytes = std::vector<std::byte>;

// values rounded to dtype (fp16/bf16 round to nearest even), as raw bytes.
Bytes to_dtype(const std::vector<float>& values, DType dtype);
std::vector<float> from_dtype(const Bytes& raw, DType dtype);

// rows*cols N(0,1) values; `outlier_cols` columns scaled by `outlier_scale`.
std::vector<float> normal(uint64_t rows, uint64_t cols, uint32_t seed,
                          std::vector<uint64_t> outlier_cols = {}, float outlier_scale = 1.0f);

// Values that stress the quantizer: exact midpoints times power-of-two scales, +-absmax,
// zeros, subnormals, huge and tiny blocks.
std::vector<float> tricky(uint64_t n, uint32_t seed);

// encode() into a fresh buffer; REQUIREs success.
Bytes encode_ok(const Params& p, const Bytes& src);
Bytes decode_ok(const Bytes& encoded, DType out);

std::string describe(const Params& p);

}  // namespace kvtier::nf4::testing
