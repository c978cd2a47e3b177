// Harness (f): NF4 decoding of hostile encodings (kernels/nf4.h) and the daemon's decode of a
// block by its layout (engine/gpu_moves.cpp promote_block, into a GPU emulation pool).
//
// Each input starts from a valid encoding: parameters and values taken from the input are
// encoded with nf4::encode, then bytes of the input overwrite parts of it (header fields,
// scales, codes, outlier tables) and it may be cut short or grown.  Then:
//   - every CPU path (scalar, avx2, avx512 where this CPU has it) decodes it to every output
//     dtype; they must agree on the status and, when it decodes, on every byte (they are
//     documented as byte-identical);
//   - a BlockLayout from the input (dtype, shape, codec, offset of the tensor in the block)
//     goes with the block to promote_block, the path by which a host block (from the disk
//     tier, whose layout is read back from LMDB) lands in a GPU pool: it may refuse the block,
//     but may write nothing outside the tensor's place in the GPU layout.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/gpu_moves.h"
#include "kernels/nf4.h"
#include "kernels/nf4_internal.h"
#include "tiers/gpu/device_backend.h"

using namespace kvtier;

namespace {

constexpr uint64_t kPoolBytes = 2 << 20;  // the emulation's granularity
constexpr std::byte kSentinel{0xa5};

gpu::DevicePool& pool() {
  static auto backend = gpu::make_emulation_backend(1, kPoolBytes);
  static auto p = std::move(backend->create_pool(0, kPoolBytes, gpu::HandleType::kMemfd).value());
  return *p;
}

[[noreturn]] void fail(const char* why) {
  std::fprintf(stderr, "fuzz_nf4: %s\n", why);
  std::abort();
}

void decode_everywhere(std::span<const std::byte> enc) {
  static const char* const kPaths[] = {"scalar", "avx2", "avx512"};
  static const DType kOut[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kU8};
  auto h = nf4::parse_header(enc);
  const uint64_t n = h ? h->params.rows * h->params.cols : 0;
  if (n > (1u << 22)) return;
  for (DType out : kOut) {
    const size_t bytes = std::max<size_t>(n * std::max<size_t>(dtype_size(out), 1), 1);
    std::vector<std::byte> first, dst;
    Status first_st;
    bool have_first = false;
    for (const char* path : kPaths) {
      dst.assign(bytes, std::byte{0});
      Status st = nf4::decode_with(path, enc, out, dst);
      if (st.code() == Errc::kUnavailable) continue;  // not on this CPU
      if (!have_first) {
        first = dst;
        first_st = st;
        have_first = true;
        continue;
      }
      if (st.code() != first_st.code()) fail("the CPU paths disagree on the status");
      if (st && dst != first) fail("the CPU paths decode to different bytes");
    }
    // A short destination is refused, never written past.
    if (n > 0 && dtype_size(out) > 0) {
      dst.assign(bytes - 1, std::byte{0});
      if (nf4::decode(enc, out, dst)) fail("decode accepted a short destination");
    }
  }
}

void promote(FuzzedDataProvider& in, std::span<const std::byte> enc) {
  // The block: some bytes, the encoding at a 64-byte boundary, some bytes.
  const size_t lead = 64 * in.ConsumeIntegralInRange<size_t>(0, 2);
  std::vector<std::byte> block(lead + enc.size() + in.ConsumeIntegralInRange<size_t>(0, 128));
  if (!enc.empty()) std::memcpy(block.data() + lead, enc.data(), enc.size());
  BlockLayout host;
  TensorLayout t;
  t.name = "k";
  t.codec = in.ConsumeBool() ? Codec::kNf4 : Codec::kRaw;
  t.dtype = static_cast<DType>(in.ConsumeIntegralInRange<uint8_t>(0, 6));
  const size_t rank = in.ConsumeIntegralInRange<size_t>(1, 3);
  for (size_t i = 0; i < rank; ++i) t.shape.push_back(in.ConsumeIntegralInRange<uint64_t>(1, 130));
  t.raw_bytes = t.elements() * dtype_size(t.dtype);
  t.offset = lead;
  t.bytes = enc.size();
  host.tensors.push_back(t);
  host.total_bytes = block.size();
  if (t.raw_bytes == 0 || t.raw_bytes > kPoolBytes / 2) return;
  const BlockLayout gpu = plan_gpu_layout(host);
  gpu::DevicePool& p = pool();
  const uint64_t at = 64 * in.ConsumeIntegralInRange<uint64_t>(0, 16);
  // Only this window of the pool can be written: the tensor's place, or what its bytes or its
  // NF4 header would fill there (at most 4 bytes a value, two values a byte).  Resetting and
  // checking 2 MiB per input instead cost more than the decoding.
  const uint64_t most = std::max<uint64_t>({t.raw_bytes, t.bytes, 8 * enc.size()});
  const uint64_t window = std::min<uint64_t>(kPoolBytes, at + gpu.total_bytes + most + 4096);
  auto* base = reinterpret_cast<std::byte*>(p.base());
  std::memset(base, static_cast<int>(kSentinel), window);
  (void)promote_block(p, host, block.data(), gpu, at);
  const uint64_t begin = at + gpu.tensors[0].offset, end = begin + gpu.tensors[0].bytes;
  // memcmp, not a loop: every comparison in instrumented code is traced for libFuzzer.
  static const std::vector<std::byte> sentinel(kPoolBytes, kSentinel);
  if (std::memcmp(base, sentinel.data(), begin) != 0 ||
      (end < window && std::memcmp(base + end, sentinel.data(), window - end) != 0)) {
    std::fprintf(stderr,
                 "fuzz_nf4: promote_block wrote pool bytes outside the tensor's "
                 "[%llu, %llu) (NF4 header rows x cols vs. the layout's shape)\n",
                 static_cast<unsigned long long>(begin), static_cast<unsigned long long>(end));
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  nf4::Params p;
  static const DType kTypes[] = {DType::kF16, DType::kBF16, DType::kF32};
  p.dtype = kTypes[in.ConsumeIntegralInRange<size_t>(0, 2)];
  p.layout = in.ConsumeBool() ? Nf4Layout::kColumnBlocks : Nf4Layout::kRowBlocks;
  p.double_quant = in.ConsumeBool();
  p.keep_outlier_channels = in.ConsumeBool();
  if (in.ConsumeBool()) p.version = nf4::kVersion1;  // still decoded: both formats
  p.rows = in.ConsumeIntegralInRange<uint64_t>(1, 130);
  p.cols = in.ConsumeIntegralInRange<uint64_t>(1, 130);
  // Up to 4096 values: partial and whole blocks and 64-row column groups, at a few thousand
  // inputs a second (every comparison in the codec's loops is traced for libFuzzer).
  if (p.rows * p.cols > 4096) p.rows = std::max<uint64_t>(1, 4096 / p.cols);
  std::vector<std::byte> src(p.rows * p.cols * dtype_size(p.dtype));
  const auto values = in.ConsumeBytes<uint8_t>(src.size());
  if (!values.empty()) std::memcpy(src.data(), values.data(), values.size());
  // NaN and Inf are refused by the encoder: clear the exponent's top bit where it is all ones.
  for (size_t i = 0; i < src.size(); i += dtype_size(p.dtype)) {
    auto* e = reinterpret_cast<uint8_t*>(src.data()) + i + dtype_size(p.dtype) - 1;
    *e &= 0xbf;
  }
  std::vector<std::byte> enc(nf4::encoded_size(p));
  if (Status st = nf4::encode(p, src, enc); !st) return 0;
  if (auto h = nf4::parse_header(enc)) enc.resize(h->total_size);  // outliers: exact size
  // Patches: (offset, byte) pairs, then a new size.
  const size_t patches = in.ConsumeIntegralInRange<size_t>(0, 16);
  for (size_t i = 0; i < patches && !enc.empty(); ++i) {
    const size_t at = in.ConsumeBool() ? in.ConsumeIntegralInRange<size_t>(0, 63)
                                       : in.ConsumeIntegralInRange<size_t>(0, enc.size() - 1);
    enc[at % enc.size()] = std::byte{in.ConsumeIntegral<uint8_t>()};
  }
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0)
    enc.resize(in.ConsumeIntegralInRange<size_t>(0, enc.size() + 64));
  decode_everywhere(enc);
  promote(in, enc);
  return 0;
}
