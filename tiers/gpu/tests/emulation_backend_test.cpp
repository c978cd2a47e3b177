#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <vector>

#include "tiers/gpu/device_backend.h"
#include "tiers/gpu/tests/test_util.h"

using namespace kvtier;
using namespace kvtier::gpu;
using kvtier::gpu::testing::byte_pattern;
using kvtier::gpu::testing::fp16_tensor;

namespace {

std::unique_ptr<DevicePool> make_pool(DeviceBackend& backend, int device, uint64_t bytes) {
  auto p = backend.create_pool(device, bytes, HandleType::kMemfd);
  REQUIRE(p.is_ok());
  return std::move(p).value();
}

int open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d != nullptr);
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

// Runs fn in a forked child; its exit code, or 128 + the signal that killed it.
template <typename Fn>
int in_child(Fn fn) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(fn());
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("emulation: probe reports the emulated devices") {
  auto backend = make_emulation_backend(2, 256ull << 20);
  CHECK(backend->kind() == BackendKind::kEmulation);
  CHECK(std::string(backend->name()) == "emulation");
  const ProbeReport& r = backend->probe();
  CHECK(r.driver);
  CHECK(r.driver_version == 0);
  REQUIRE(r.devices.size() == 2);
  CHECK(r.devices[1].index == 1);
  CHECK(r.devices[1].name == "emulated device 1");
  CHECK(r.devices[1].total_bytes == 256ull << 20);
  CHECK(r.message == "host emulation: 2 devices x 256 MiB of shared host memory (no GPU used)");
  INFO(r.message);
}

TEST_CASE("emulation: create_pool refuses other devices and handle types") {
  auto backend = make_emulation_backend(2, 64 << 20);
  auto bad_device = backend->create_pool(2, 1 << 20, HandleType::kMemfd);
  CHECK(bad_device.status().code() == Errc::kUnavailable);
  CHECK_THAT(bad_device.status().message(), Catch::Contains("no such device"));
  CHECK(backend->create_pool(-1, 1 << 20, HandleType::kMemfd).status().code() ==
        Errc::kUnavailable);
  for (HandleType t : {HandleType::kVmmFd, HandleType::kCudaIpc}) {
    auto p = backend->create_pool(0, 1 << 20, t);
    CHECK(p.status().code() == Errc::kUnavailable);
    CHECK_THAT(p.status().message(), Catch::Contains(handle_type_name(t)));
  }
  // Device memory is a budget: two pools of 48 MiB do not fit one 64 MiB device.
  auto a = make_pool(*backend, 0, 48 << 20);
  CHECK(backend->create_pool(0, 48 << 20, HandleType::kMemfd).status().code() == Errc::kNoSpace);
  auto b = make_pool(*backend, 1, 48 << 20);  // the other device has its own
  a.reset();
  CHECK(backend->create_pool(0, 48 << 20, HandleType::kMemfd).is_ok());
}

TEST_CASE("emulation: write and read round trip, bounds checked") {
  auto backend = make_emulation_backend(1, 64 << 20);
  auto pool = make_pool(*backend, 0, 4 << 20);
  CHECK(pool->device() == 0);
  CHECK(pool->size() == 4 << 20);
  CHECK(pool->handle_type() == HandleType::kMemfd);
  const auto src = byte_pattern(100000, 3);
  REQUIRE(pool->write(4096, src).is_ok());
  std::vector<std::byte> dst(src.size());
  REQUIRE(pool->read(4096, dst).is_ok());
  CHECK(dst == src);
  CHECK(std::memcmp(reinterpret_cast<const void*>(pool->base() + 4096), src.data(), src.size()) ==
        0);
  CHECK(pool->write(pool->size() - 10, src).code() == Errc::kInvalidArgument);
  CHECK(pool->read(pool->size() + 1, {dst.data(), 0}).code() == Errc::kInvalidArgument);
  CHECK(pool->write(~0ull - 5, src).code() == Errc::kInvalidArgument);  // no wrap-around
  CHECK(pool->write(pool->size(), {}).is_ok());
}

TEST_CASE("emulation: copy_from copies device to device, within a pool and between pools") {
  auto backend = make_emulation_backend(2, 64 << 20);
  auto a = make_pool(*backend, 0, 4 << 20);
  auto b = make_pool(*backend, 1, 4 << 20);
  const auto src = byte_pattern(70000, 9);
  REQUIRE(a->write(128, src).is_ok());
  REQUIRE(a->copy_from(*a, 128, 1 << 20, src.size()).is_ok());   // within one pool
  REQUIRE(b->copy_from(*a, 1 << 20, 4096, src.size()).is_ok());  // to another device's pool
  std::vector<std::byte> dst(src.size());
  REQUIRE(b->read(4096, dst).is_ok());
  CHECK(dst == src);
  CHECK(a->copy_from(*a, 0, 100, 200).code() == Errc::kInvalidArgument);  // overlapping
  CHECK(b->copy_from(*a, a->size() - 10, 0, 20).code() == Errc::kInvalidArgument);
  CHECK(b->copy_from(*a, 0, b->size() - 10, 20).code() == Errc::kInvalidArgument);
  CHECK(b->copy_from(*a, ~0ull - 5, 0, 10).code() == Errc::kInvalidArgument);
  CHECK(b->copy_from(*a, 0, 0, 0).is_ok());
}

TEST_CASE("emulation: quantize_from and dequantize_into give the CPU codec's bytes") {
  auto backend = make_emulation_backend(1, 64 << 20);
  auto pool = make_pool(*backend, 0, 4 << 20);
  REQUIRE(backend->register_host({}).is_ok());  // nothing to do here, accepted

  for (Nf4Layout layout : {Nf4Layout::kRowBlocks, Nf4Layout::kColumnBlocks}) {
    for (bool dq : {false, true}) {
      nf4::Params p;
      p.dtype = DType::kF16;
      p.layout = layout;
      p.double_quant = dq;
      p.rows = 64;
      p.cols = 128;
      const auto src = fp16_tensor(p.rows * p.cols, 11);
      REQUIRE(pool->write(1 << 20, src).is_ok());

      std::vector<std::byte> want(nf4::encoded_size(p));
      REQUIRE(nf4::encode(p, src, want).is_ok());
      std::vector<std::byte> got(want.size() + 16, std::byte{0xee});
      REQUIRE(pool->quantize_from(p, 1 << 20, got).is_ok());
      CHECK(std::equal(want.begin(), want.end(), got.begin()));

      std::vector<std::byte> decoded(src.size());
      REQUIRE(nf4::decode(want, DType::kF16, decoded).is_ok());
      REQUIRE(pool->dequantize_into(want, DType::kF16, 2 << 20).is_ok());
      std::vector<std::byte> back(decoded.size());
      REQUIRE(pool->read(2 << 20, back).is_ok());
      CHECK(back == decoded);
    }
  }
}

TEST_CASE("emulation: the codec refuses what the CUDA kernels refuse") {
  auto backend = make_emulation_backend(1, 64 << 20);
  auto pool = make_pool(*backend, 0, 2 << 20);
  nf4::Params p;
  p.rows = 4;
  p.cols = 64;
  std::vector<std::byte> dst(nf4::encoded_size(p));
  std::vector<std::byte> nan(p.rows * p.cols * 2);
  const uint16_t qnan = 0x7e00;
  std::memcpy(nan.data() + 10, &qnan, 2);
  REQUIRE(pool->write(0, nan).is_ok());
  CHECK(pool->quantize_from(p, 0, dst).code() == Errc::kInvalidArgument);  // NaN
  CHECK(pool->quantize_from(p, pool->size() - 64, dst).code() == Errc::kInvalidArgument);
  std::vector<std::byte> short_dst(dst.size() - 1);
  CHECK(pool->quantize_from(p, 0, short_dst).code() == Errc::kInvalidArgument);
  nf4::Params outliers = p;
  outliers.keep_outlier_channels = true;
  CHECK(pool->quantize_from(outliers, 0, dst).code() == Errc::kInvalidArgument);
  std::vector<std::byte> garbage(128, std::byte{1});
  CHECK(pool->dequantize_into(garbage, DType::kF16, 0).code() == Errc::kCorrupt);
}

TEST_CASE("emulation: export, import in a child: read-only, same bytes, fd closed") {
  auto backend = make_emulation_backend(1, 64 << 20);
  auto pool = make_pool(*backend, 0, 2 << 20);
  const auto src = byte_pattern(8192, 0x5a);
  REQUIRE(pool->write(65536, src).is_ok());

  auto e = pool->export_handle();
  REQUIRE(e.is_ok());
  CHECK(e->type == HandleType::kMemfd);
  CHECK(e->device == 0);
  CHECK(e->bytes == pool->size());
  REQUIRE(e->fd >= 0);
  CHECK((::fcntl(e->fd, F_GETFL) & O_ACCMODE) == O_RDONLY);

  const int rc = in_child([&]() -> int {
    const int before = open_fds();
    auto imported = import_pool(*e);
    if (!imported) return 10;
    if (open_fds() != before - 1) return 11;  // the received fd was closed
    if (::fcntl(e->fd, F_GETFD) != -1 || errno != EBADF) return 12;
    const ImportedPool& ip = **imported;
    if (ip.size() != pool->size() || ip.device() != 0) return 13;
    auto* base = reinterpret_cast<std::byte*>(ip.base());
    if (std::memcmp(base + 65536, src.data(), src.size()) != 0) return 14;
    // Read-only: the mapping cannot be made writable (the fd was opened O_RDONLY) ...
    if (::mprotect(base, 4096, PROT_READ | PROT_WRITE) == 0 || errno != EACCES) return 15;
    // ... and a write to it faults (in a grandchild, so this child survives to report).
    const int w = in_child([&]() -> int {
      std::signal(SIGSEGV, SIG_DFL);  // not Catch's handler: die quietly of the fault
      *reinterpret_cast<volatile std::byte*>(base + 65536) = std::byte{0};
      return 0;
    });
    if (w != 128 + SIGSEGV) return 16;
    return 0;
  });
  CHECK(rc == 0);
  ::close(e->fd);  // the parent's copy of the export (the child owned its own)

  // The daemon's pool is unchanged.
  std::vector<std::byte> back(src.size());
  REQUIRE(pool->read(65536, back).is_ok());
  CHECK(back == src);
}

TEST_CASE("emulation: a writable export maps read-write, and writes reach the pool") {
  auto backend = make_emulation_backend(1, 64 << 20);
  auto pool = make_pool(*backend, 0, 2 << 20);
  auto e = pool->export_handle(true);
  REQUIRE(e.is_ok());
  CHECK(e->writable);
  CHECK((::fcntl(e->fd, F_GETFL) & O_ACCMODE) == O_RDWR);
  auto imported = import_pool(*e);
  REQUIRE(imported.is_ok());
  const auto src = byte_pattern(4096, 0x33);
  std::memcpy(reinterpret_cast<std::byte*>((*imported)->base()) + 8192, src.data(), src.size());
  std::vector<std::byte> back(src.size());
  REQUIRE(pool->read(8192, back).is_ok());
  CHECK(back == src);
}

TEST_CASE("import_pool closes the descriptor on failure too") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  ::close(fds[1]);
  PoolExport e;
  e.type = HandleType::kMemfd;
  e.bytes = 1 << 20;
  e.fd = fds[0];  // not a memory file
  const int before = open_fds();
  auto r = import_pool(e);
  CHECK(r.status().code() == Errc::kInvalidArgument);
  CHECK(open_fds() == before - 1);

  e.fd = ::memfd_create("short", MFD_CLOEXEC);
  REQUIRE(e.fd >= 0);
  REQUIRE(::ftruncate(e.fd, 4096) == 0);  // shorter than e.bytes: would SIGBUS if mapped
  CHECK(import_pool(e).status().code() == Errc::kInvalidArgument);
  CHECK(open_fds() == before - 1);

  e.type = static_cast<HandleType>(9);
  e.fd = ::dup(0);
  CHECK(import_pool(e).status().code() == Errc::kInvalidArgument);
  CHECK(open_fds() == before - 1);
}
