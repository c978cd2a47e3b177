// The CUDA backend on a real GPU (built with CUDA only).  Every case returns early, with a
// warning, where make_cuda_backend() finds no usable device, so it passes on CI machines.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tiers/gpu/cuda_api.h"
#include "tiers/gpu/device_backend.h"
#include "tiers/gpu/tests/test_util.h"

using namespace kvtier;
using namespace kvtier::gpu;
using kvtier::gpu::testing::byte_pattern;
using kvtier::gpu::testing::fp16_tensor;

namespace {

constexpr uint64_t kPatternOffset = 1 << 20;
constexpr size_t kPatternBytes = 65536;

std::unique_ptr<DeviceBackend> backend_or_skip() {
  auto b = make_cuda_backend();
  if (!b) {
    WARN("no usable GPU, skipped: " << b.status().message());
    return nullptr;
  }
  return std::move(b).value();
}

std::vector<HandleType> handle_types(const DeviceBackend& b) {
  std::vector<HandleType> v{HandleType::kCudaIpc};
  if (b.probe().devices.at(0).vmm) v.push_back(HandleType::kVmmFd);
  return v;
}

// quantize_from/dequantize_into with host buffers `enc` and `out`, against the CPU codec.
void check_codec(DevicePool& pool, std::span<std::byte> enc) {
  nf4::Params p;
  p.dtype = DType::kF16;
  p.rows = 256;
  p.cols = 128;
  p.double_quant = true;
  const auto src = fp16_tensor(p.rows * p.cols, 3);
  REQUIRE(pool.write(0, src).is_ok());
  std::vector<std::byte> want(nf4::encoded_size(p));
  REQUIRE(nf4::encode(p, src, want).is_ok());
  REQUIRE(enc.size() >= want.size());
  REQUIRE(pool.quantize_from(p, 0, enc).is_ok());
  CHECK(std::memcmp(enc.data(), want.data(), want.size()) == 0);

  std::vector<std::byte> decoded(src.size());
  REQUIRE(nf4::decode(want, DType::kF16, decoded).is_ok());
  REQUIRE(pool.dequantize_into(enc.first(want.size()), DType::kF16, 4 << 20).is_ok());
  std::vector<std::byte> back(decoded.size());
  REQUIRE(pool.read(4 << 20, back).is_ok());
  CHECK(back == decoded);
}

std::string hex(std::span<const std::byte> b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (std::byte x : b) {
    s += d[std::to_integer<int>(x) >> 4];
    s += d[std::to_integer<int>(x) & 15];
  }
  return s;
}

}  // namespace

TEST_CASE("cuda: pools copy bytes and run the NF4 kernels like the CPU codec") {
  auto b = backend_or_skip();
  if (!b) return;
  // Registered host memory (the host tier's arena in the daemon), page aligned.
  const size_t host_bytes = 8 << 20;
  void* host =
      ::mmap(nullptr, host_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(host != MAP_FAILED);
  REQUIRE(b->register_host({static_cast<std::byte*>(host), host_bytes}).is_ok());
  for (HandleType t : handle_types(*b)) {
    INFO("handle " << handle_type_name(t));
    auto pool = b->create_pool(0, 8 << 20, t);
    REQUIRE(pool.is_ok());
    DevicePool& pl = **pool;
    CHECK(pl.size() >= 8 << 20);
    CHECK(pl.handle_type() == t);
    CHECK(pl.base() != 0);
    const auto src = byte_pattern(kPatternBytes, 9);
    REQUIRE(pl.write(kPatternOffset, src).is_ok());
    std::vector<std::byte> back(src.size());
    REQUIRE(pl.read(kPatternOffset, back).is_ok());
    CHECK(back == src);
    CHECK(pl.write(pl.size(), src).code() == Errc::kInvalidArgument);

    std::vector<std::byte> staged(1 << 20);
    check_codec(pl, staged);  // unregistered: through the pool's pinned staging buffer
    check_codec(pl, {static_cast<std::byte*>(host) + 4096, 1 << 20});  // registered: in place
  }
  b.reset();  // unregisters the host memory before it is unmapped
  ::munmap(host, host_bytes);
}

TEST_CASE("cuda: another process imports a pool read-only and sees its bytes") {
  auto b = backend_or_skip();
  if (!b) return;
  for (HandleType t : handle_types(*b)) {
    INFO("handle " << handle_type_name(t));
    auto pool = b->create_pool(0, 8 << 20, t);
    REQUIRE(pool.is_ok());
    REQUIRE((*pool)->write(kPatternOffset, byte_pattern(kPatternBytes, 21)).is_ok());
    auto e = (*pool)->export_handle();
    REQUIRE(e.is_ok());
    if (t == HandleType::kVmmFd) {
      REQUIRE(e->fd >= 0);
      ::fcntl(e->fd, F_SETFD, 0);  // inherited by the child across exec
    }
    // A fresh process (fork alone would inherit this process's CUDA state, which CUDA forbids).
    ::setenv("KVTIER_IMPORT_TYPE", std::to_string(int(e->type)).c_str(), 1);
    ::setenv("KVTIER_IMPORT_FD", std::to_string(e->fd).c_str(), 1);
    ::setenv("KVTIER_IMPORT_BYTES", std::to_string(e->bytes).c_str(), 1);
    ::setenv("KVTIER_IMPORT_IPC", hex(e->ipc_handle).c_str(), 1);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::execl("/proc/self/exe", "gpu_tier_test", "[gpu_import_child]", nullptr);
      ::_exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // Catch's exit code: the child's failed assertions
    if (e->fd >= 0) ::close(e->fd);
    ::unsetenv("KVTIER_IMPORT_TYPE");
  }
}

// The importing side of the case above; runs only when that case starts it.
TEST_CASE("cuda import child", "[.][gpu_import_child]") {
  const char* type = std::getenv("KVTIER_IMPORT_TYPE");
  if (type == nullptr) return;
  PoolExport e;
  e.type = static_cast<HandleType>(std::atoi(type));
  e.fd = std::atoi(std::getenv("KVTIER_IMPORT_FD"));
  e.bytes = std::strtoull(std::getenv("KVTIER_IMPORT_BYTES"), nullptr, 10);
  const std::string ipc = std::getenv("KVTIER_IMPORT_IPC");
  for (size_t i = 0; i < e.ipc_handle.size(); ++i) {
    e.ipc_handle[i] = std::byte(std::stoi(ipc.substr(2 * i, 2), nullptr, 16));
  }
  auto imported = import_pool(e);
  REQUIRE(imported.is_ok());
  if (e.fd >= 0) CHECK(::fcntl(e.fd, F_GETFD) == -1);  // import closed it
  const ImportedPool& ip = **imported;
  CHECK(ip.size() == e.bytes);
  std::vector<std::byte> got(kPatternBytes);
  REQUIRE(cudaMemcpy(got.data(), reinterpret_cast<const void*>(ip.base() + kPatternOffset),
                     got.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(got == byte_pattern(kPatternBytes, 21));
  if (e.type == HandleType::kVmmFd) {
    auto api = cuda::driver_api();
    REQUIRE(api.is_ok());
    CUmemLocation loc;
    loc.type = CU_MEM_LOCATION_TYPE_DEVICE;
    loc.id = 0;
    unsigned long long flags = 0;
    REQUIRE((*api)->mem_get_access(&flags, &loc, static_cast<CUdeviceptr>(ip.base())) ==
            CUDA_SUCCESS);
    CHECK(flags == CU_MEM_ACCESS_FLAGS_PROT_READ);
  }
}

TEST_CASE("cuda: quantize_batch and dequantize_batch of many tensors equal the CPU codec") {
  auto b = backend_or_skip();
  if (!b) return;
  const size_t host_bytes = 16 << 20;
  void* host =
      ::mmap(nullptr, host_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(host != MAP_FAILED);
  REQUIRE(b->register_host({static_cast<std::byte*>(host), host_bytes}).is_ok());
  auto pool = b->create_pool(0, 32 << 20, handle_types(*b).back());
  REQUIRE(pool.is_ok());
  DevicePool& pl = **pool;
  constexpr int kTensors = 40;  // three launches of 16 per step
  constexpr uint64_t kSlot = 256 << 10;
  std::vector<nf4::Params> params;
  std::vector<std::vector<std::byte>> src, want, unregistered(kTensors);
  std::vector<QuantizeOp> q;
  for (int i = 0; i < kTensors; ++i) {
    nf4::Params p;
    p.dtype = i % 2 ? DType::kF16 : DType::kBF16;
    p.layout = i % 3 ? Nf4Layout::kRowBlocks : Nf4Layout::kColumnBlocks;
    p.double_quant = i % 4 != 0;
    if (i % 5 == 1) p.version = nf4::kVersion1;
    p.rows = 64 + i * 3;
    p.cols = i % 7 == 0 ? 72 : 128;
    params.push_back(p);
    src.push_back(fp16_tensor(p.rows * p.cols, 100 + i));       // fp16 bytes, also read as bf16
    if (i == 17) std::memset(src.back().data() + 10, 0xff, 2);  // NaN in either dtype
    REQUIRE(pl.write(uint64_t(i) * kSlot, src.back()).is_ok());
    want.emplace_back(nf4::encoded_size(p));
    if (i != 17) REQUIRE(nf4::encode(p, src.back(), want.back()).is_ok());
    std::span<std::byte> dst;
    if (i % 2) {
      dst = {static_cast<std::byte*>(host) + uint64_t(i) * kSlot, want.back().size()};
    } else {
      unregistered[i].assign(want.back().size(), std::byte{0});
      dst = unregistered[i];
    }
    q.push_back({p, uint64_t(i) * kSlot, dst});
  }
  const std::vector<Status> enc = pl.quantize_batch(q);
  REQUIRE(enc.size() == kTensors);
  std::vector<DequantizeOp> d;
  for (int i = 0; i < kTensors; ++i) {
    INFO("tensor " << i);
    if (i == 17) {
      CHECK(enc[i].code() == Errc::kInvalidArgument);
      continue;
    }
    REQUIRE(enc[i].is_ok());
    CHECK(std::memcmp(q[i].dst.data(), want[i].data(), want[i].size()) == 0);
    d.push_back({q[i].dst, params[i].dtype, (16 << 20) + uint64_t(i) * kSlot});
  }
  const std::vector<Status> dec = pl.dequantize_batch(d);
  for (size_t k = 0; k < d.size(); ++k) {
    REQUIRE(dec[k].is_ok());
    auto h = nf4::parse_header(d[k].encoded);
    REQUIRE(h.is_ok());
    std::vector<std::byte> ref(h->params.rows * h->params.cols * 2), back(ref.size());
    REQUIRE(nf4::decode(d[k].encoded, d[k].out_dtype, ref).is_ok());
    REQUIRE(pl.read(d[k].offset, back).is_ok());
    CHECK(back == ref);
  }
  pool->reset();
  b.reset();
  ::munmap(host, host_bytes);
}
