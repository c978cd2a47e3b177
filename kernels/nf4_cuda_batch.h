// Batches of NF4 encodings and decodings: one kernel launch runs one step for up to kBatchOps
// tensors, and the whole encode sequence of a batch synchronises its stream once.
//
// The sequences are templates over an executor (alloc, upload, zero, launch, download, sync,
// release) so that the CUDA launcher (nf4_cuda.cu) and the test that runs the kernel bodies on
// the CPU (kernels/tests/nf4_cuda_grid_test.cpp) run the same steps in the same order.
// Compiles as C++17 (nvcc) and C++20 (g++).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/nf4_cuda_kernels.h"

namespace kvtier::nf4::dev {

enum Step : uint8_t {
  kStepAbsmax = 0,
  kStepPrepare,  // header and zeroed sections; skipped for input the absmax pass refused
  kStepDq7,
  kStepDqSum,
  kStepDqOffset,
  kStepDqQuant,
  kStepScales,
  kStepCodes,
  kStepDecode,
};

// Tensors per launch: the parameters stay under the classic 4 KiB kernel-parameter limit.
inline constexpr uint32_t kBatchOps = 16;
inline constexpr uint32_t kHeaderBytes = 64;  // nf4::kMaxHeaderSize

// A launch's parameters (passed by value, __grid_constant__ on the device).  Op i owns grid
// blocks [starts[i], starts[i+1]); an op with no work for the step owns none.
struct BatchParams {
  CodecArgs ops[kBatchOps];
  uint32_t starts[kBatchOps + 1] = {};
  uint32_t count = 0;
  uint8_t step = 0;
  uint8_t headers[kBatchOps][kHeaderBytes] = {};  // kStepPrepare: each op's header bytes
};

// Threads an op needs for a step; 0 when the step does not apply to it.
KVTIER_HD uint64_t step_work(uint8_t step, const CodecArgs& a) {
  const bool dq1 = a.double_quant && !a.log_dq;
  switch (step) {
    case kStepAbsmax:
      return a.num_blocks;
    case kStepPrepare:
      return a.codes_offset;
    case kStepDq7:
      return a.log_dq ? a.num_groups : 0;
    case kStepDqSum:
    case kStepDqQuant:
      return dq1 ? a.num_groups : 0;
    case kStepDqOffset:
      return dq1 ? 1 : 0;
    case kStepScales:
      return a.double_quant ? 0 : a.num_blocks;
    case kStepCodes:
    case kStepDecode:
      return (a.n + kElemsPerThread - 1) / kElemsPerThread;
    default:
      return 0;
  }
}

KVTIER_HD void step_thread(uint8_t step, const CodecArgs& a, const uint8_t* header, uint32_t block,
                           uint32_t dim, uint32_t thread) {
  switch (step) {
    case kStepAbsmax:
      return absmax_thread(a, block, dim, thread);
    case kStepPrepare:
      return prepare_thread(a, header, block, dim, thread);
    case kStepDq7:
      return dq7_thread(a, block, dim, thread);
    case kStepDqSum:
      return dq_sum_thread(a, block, dim, thread);
    case kStepDqOffset:
      return dq_offset_thread(a, block, dim, thread);
    case kStepDqQuant:
      return dq_quant_thread(a, block, dim, thread);
    case kStepScales:
      return scales_thread(a, block, dim, thread);
    case kStepCodes:
      return codes8_thread(a, block, dim, thread);
    case kStepDecode:
      return decode8_thread(a, block, dim, thread);
    default:
      return;
  }
}

// The body of the batch kernel: finds the op that owns grid block `block` and runs the step's
// thread for it.  Encode steps after the absmax pass skip an op whose input was refused.
KVTIER_HD void batch_thread(const BatchParams& b, uint32_t block, uint32_t dim, uint32_t thread) {
  uint32_t lo = 0, hi = b.count;  // the last op with starts[op] <= block
  while (hi - lo > 1) {
    uint32_t mid = (lo + hi) / 2;
    if (b.starts[mid] <= block) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const CodecArgs& a = b.ops[lo];
  if (b.step != kStepAbsmax && b.step != kStepDecode && *a.bad_input != 0) return;
  step_thread(b.step, a, b.headers[lo], block - b.starts[lo], dim, thread);
}

// Fills p.starts for ops [first, first + p.count); false when the grid would be too large.
inline bool plan_launch(BatchParams& p) {
  uint64_t at = 0;
  for (uint32_t i = 0; i < p.count; ++i) {
    p.starts[i] = static_cast<uint32_t>(at);
    at += grid_blocks(step_work(p.step, p.ops[i]));
    if (at > 0x7FFFFFFFu) return false;
  }
  p.starts[p.count] = static_cast<uint32_t>(at);
  return true;
}

// Launches `step` for every op, kBatchOps at a time; headers (kHeaderBytes per op) for
// kStepPrepare.
template <class X>
void launch_step(X& x, uint8_t step, const std::vector<CodecArgs>& ops, const uint8_t* headers) {
  for (size_t first = 0; first < ops.size() && x.ok(); first += kBatchOps) {
    BatchParams p;
    p.step = step;
    p.count =
        static_cast<uint32_t>(ops.size() - first < kBatchOps ? ops.size() - first : kBatchOps);
    for (uint32_t i = 0; i < p.count; ++i) {
      p.ops[i] = ops[first + i];
      if (headers != nullptr)
        std::memcpy(p.headers[i], headers + (first + i) * kHeaderBytes, kHeaderBytes);
    }
    if (!plan_launch(p)) {
      x.fail_too_large();
      return;
    }
    if (p.starts[p.count] > 0) x.launch(p, p.starts[p.count]);
  }
}

inline uint64_t align8(uint64_t n) {
  return (n + 7) / 8 * 8;
}

// Encodes every op (src, encoded and the plan's fields set; scratch pointers are filled in
// here).  headers: kHeaderBytes per op, each op's header_size bytes used.  bad[i] gets the
// op's flag (CodecArgs::bad_input).  One synchronisation, a second only when a double-quant
// scale overflowed (that op's header is cleared, so the bytes do not parse).
template <class X>
void encode_batch(X& x, std::vector<CodecArgs> ops, const uint8_t* headers, uint32_t* bad) {
  if (ops.empty()) return;
  // Scratch: every op's flag first (one zeroing, one read back), then each op's scales (fp32),
  // group sums (double) and offset (fp32), 8-byte aligned.
  uint64_t total = align8(ops.size() * 4);
  std::vector<uint64_t> at(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    at[i] = total;
    total += align8(ops[i].num_blocks * 4) + ops[i].num_groups * 8 + 8;
  }
  char* base = static_cast<char*>(x.alloc(total));
  if (base == nullptr) return;
  for (size_t i = 0; i < ops.size(); ++i) {
    CodecArgs& a = ops[i];
    char* s = base + at[i];
    a.scales = reinterpret_cast<float*>(s);
    a.group_sums = reinterpret_cast<double*>(s + align8(a.num_blocks * 4));
    a.offset = reinterpret_cast<float*>(s + align8(a.num_blocks * 4) + a.num_groups * 8);
    a.bad_input = reinterpret_cast<uint32_t*>(base) + i;
  }
  x.zero(base, ops.size() * 4);
  const uint8_t steps[] = {kStepAbsmax,   kStepPrepare, kStepDq7,    kStepDqSum,
                           kStepDqOffset, kStepDqQuant, kStepScales, kStepCodes};
  for (uint8_t step : steps) launch_step(x, step, ops, step == kStepPrepare ? headers : nullptr);
  x.download(bad, base, ops.size() * 4);
  x.release(base);
  if (!x.sync()) return;
  bool cleared = false;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (bad[i] == 2) {
      x.zero(ops[i].encoded, ops[i].header_size);
      cleared = true;
    }
  }
  if (cleared) x.sync();
}

// Queues the decode of every op (encoded, dst and the plan's fields set); no synchronisation.
template <class X>
void decode_batch(X& x, const std::vector<CodecArgs>& ops) {
  launch_step(x, kStepDecode, ops, nullptr);
}

}  // namespace kvtier::nf4::dev
