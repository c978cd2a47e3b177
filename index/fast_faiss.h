// FAISS index types whose per-query work runs on the index/simd_dot.h kernels instead of
// Debian FAISS's scalar code.  They change no FAISS behaviour other than speed (results equal
// FAISS's own up to float summation order) and no file format: faiss::write_index writes them
// as their base types, and adopt() turns what faiss::read_index returns back into them.
// Internal to kvtier_index.
#pragma once

#include <faiss/IndexFlat.h>
#include <faiss/IndexScalarQuantizer.h>

#include <memory>

namespace kvtier::index_detail {

// Inner-product flat index (the exact index, and the IVF's coarse quantizer).  Searches of up
// to kSmallBatch queries scan with dot_rows_f32 on the calling thread; bigger batches (the
// k-means assignments of training, bulk adds) stay on FAISS's BLAS path.
struct FlatIP final : faiss::IndexFlatIP {
  static constexpr idx_t kSmallBatch = 16;
  explicit FlatIP(idx_t d) : faiss::IndexFlatIP(d) {}
  void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
              const faiss::SearchParameters* params = nullptr) const override;
};

// IVF over inner product with residuals encoded by an 8-bit scalar quantizer (QT_8bit: "SQ8");
// its inverted-list scanner computes <q, decoded code> as one dot product of a per-query
// weight vector with the raw codes (dot_rows_u8).  The coarse quantizer is a FlatIP.
struct IvfSq8 final : faiss::IndexIVFScalarQuantizer {
  IvfSq8(size_t d, size_t nlist);
  // Takes over a loaded index's quantizer, lists and trained quantizer; `loaded` is left
  // owning nothing.
  explicit IvfSq8(faiss::IndexIVFScalarQuantizer& loaded);
  faiss::InvertedListScanner* get_InvertedListScanner(bool store_pairs,
                                                      const faiss::IDSelector* sel) const override;
  // FAISS's own decode opens an OpenMP region per call (~50 us a vector here: a rebuild at
  // 840k vectors spent 44 s reconstructing them); this one decodes on the calling thread with
  // the same float operations.
  void reconstruct_from_offset(int64_t list_no, int64_t offset, float* recons) const override;
};

// The index faiss::read_index returned, as the types above where it is one of their base
// types (IndexIDMap2 over IndexFlatIP, IndexIVFScalarQuantizer over IndexFlatIP); others
// are returned unchanged.
std::unique_ptr<faiss::Index> adopt(std::unique_ptr<faiss::Index> loaded);

}  // namespace kvtier::index_detail
