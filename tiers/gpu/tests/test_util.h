// Inputs shared by the GPU tier's tests.
#pragma once

#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

namespace kvtier::gpu::testing {

// n fp16 values drawn from N(0, 1).
inline std::vector<std::byte> fp16_tensor(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<std::byte> out(n * 2);
  for (size_t i = 0; i < n; ++i) {
    _Float16 h = static_cast<_Float16>(dist(rng));
    std::memcpy(&out[i * 2], &h, 2);
  }
  return out;
}

// n bytes that differ from their neighbours and from other seeds.
inline std::vector<std::byte> byte_pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = std::byte((i * 131 + seed) & 0xff);
  return out;
}

}  // namespace kvtier::gpu::testing
