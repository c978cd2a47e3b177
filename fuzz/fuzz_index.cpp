// Harness (e): the semantic index's file loader, ModalityIndex::deserialize (index/, one
// modality index per file: docs/index.md, "modality file").
//
// A file ends with the XXH3-64 of everything before it, which random bytes never match: each
// input is tried as it is and with a correct checksum appended, so that mutation reaches the
// header, the id tables and FAISS's own reader behind it.  A file that loads must answer a
// search and serialise to a file that loads again.
//
// Allocations over 512 MiB fail (return null, so operator new throws std::bad_alloc), as they
// can on a daemon's host: a hostile size field must be refused as kCorrupt, never end the
// process with an uncaught exception.
#include <xxhash.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "index/modality_index.h"

extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=512";
}

// FAISS 1.7.3's reader (read_index, read_InvertedLists, ...) leaks what it allocated when it
// throws part way through a file (raw `new`, no RAII): a corrupt file costs the daemon what
// FAISS had read of it, once, at open.  Not kvtier's to fix; every other leak is reported.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:faiss::read_\n";
}

using kvtier::index_detail::ModalityIndex;

namespace {

void exercise(ModalityIndex& mi) {
  if (mi.dim() > (1u << 16)) return;
  std::vector<float> q(mi.dim(), 0.f);
  q[0] = 1.f;
  kvtier::IndexOptions opts;
  bool more = false;
  (void)mi.candidates(q.data(), 4, opts, &more);
  const std::string again = mi.serialize();
  auto reloaded = ModalityIndex::deserialize(again);
  if (!reloaded) {
    std::fprintf(stderr, "fuzz_index: a loaded index does not load again: %s\n",
                 reloaded.status().to_string().c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  // The loader allocates the id table a file asks for (up to 2^32 slots of 24 bytes) and turns
  // std::bad_alloc into kCorrupt; ASan's operator new reports out-of-memory instead of
  // throwing, so tables past 2^20 slots (24 MiB) are not tried here.
  if (uint64_t next_id = 0;
      size >= 32 && (std::memcpy(&next_id, data + 24, 8), next_id > (1u << 20)))
    return 0;
  if (auto mi = ModalityIndex::deserialize(raw)) exercise(**mi);
  std::string file(raw);
  const uint64_t sum = XXH3_64bits(file.data(), file.size());
  file.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  if (auto mi = ModalityIndex::deserialize(file)) exercise(**mi);
  return 0;
}
