// Host side: the kernel arguments for an encoding, shared by the CUDA launcher and the test
// that runs the kernel bodies over their grid on the CPU (so both use the same offsets).
#pragma once

#include "kernels/nf4.h"
#include "kernels/nf4_cuda_kernels.h"

namespace kvtier::nf4 {

inline dev::CodecArgs codec_args(const Header& h, uint8_t type) {
  dev::CodecArgs a;
  a.n = h.params.rows * h.params.cols;
  a.cols = h.params.cols;
  a.num_blocks = h.num_blocks;
  a.num_groups = h.num_groups;
  a.scales_offset = h.scales_offset;
  a.q8_offset = h.q8_offset;
  a.codes_offset = h.codes_offset;
  a.header_size = header_size(h.params.version);
  a.type = type;
  a.column_blocks = h.params.layout == Nf4Layout::kColumnBlocks;
  a.double_quant = h.params.double_quant;
  a.log_dq = h.params.double_quant && h.params.version != kVersion1;
  return a;
}

}  // namespace kvtier::nf4
