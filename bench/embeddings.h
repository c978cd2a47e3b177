// Synthetic 512-d embeddings for the index benchmarks: clustered (a mixture of Gaussians, like
// real embeddings) or isotropic (the worst case for IVF), and near-duplicate queries.
#pragma once

#include <faiss/utils/distances.h>
#include <faiss/utils/random.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvtier::bench {

constexpr size_t kEmbeddingDim = 512;

// Clustered: `clusters` unit centres, each point = centre + N(0, 1/d) per dimension (noise norm
// ~1, so cos(point, its centre) ~0.7).  Isotropic: N(0, 1).  Not normalised.
inline std::vector<float> make_embeddings(size_t n, bool clustered, int64_t seed) {
  const size_t d = kEmbeddingDim;
  std::vector<float> x(n * d);
  faiss::float_randn(x.data(), x.size(), seed);
  if (!clustered) return x;
  const size_t clusters = std::clamp<size_t>(n / 100, 10, 1000);
  std::vector<float> c(clusters * d);
  faiss::float_randn(c.data(), c.size(), seed + 1);
  faiss::fvec_renorm_L2(d, clusters, c.data());
  const float s = 1.f / std::sqrt(float(d));
  for (size_t i = 0; i < n; ++i) {
    const float* ci = &c[((i * 2654435761u) % clusters) * d];
    for (size_t j = 0; j < d; ++j) x[i * d + j] = ci[j] + s * x[i * d + j];
  }
  return x;
}

// Clustered: stored points with small noise (near-duplicate lookups); isotropic: fresh random
// vectors.  Normalised.
inline std::vector<float> make_embedding_queries(const std::vector<float>& data, size_t nq,
                                                 bool clustered) {
  const size_t d = kEmbeddingDim;
  std::vector<float> q(nq * d);
  faiss::float_randn(q.data(), q.size(), 777);
  if (clustered) {
    const size_t n = data.size() / d;
    const float s = 0.3f / std::sqrt(float(d));
    for (size_t i = 0; i < nq; ++i)
      for (size_t j = 0; j < d; ++j)
        q[i * d + j] = data[((i * 7919) % n) * d + j] + s * q[i * d + j];
  }
  faiss::fvec_renorm_L2(d, nq, q.data());
  return q;
}

}  // namespace kvtier::bench
