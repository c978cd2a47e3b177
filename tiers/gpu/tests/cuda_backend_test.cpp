#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tiers/gpu/device_backend.h"

using namespace kvtier;
using namespace kvtier::gpu;

// Machines without a GPU (CI) get kUnavailable with the reason; machines with one get a
// backend whose probe lists the devices.  Either way the log shows what was found.
TEST_CASE("cuda backend: probe says what it found") {
  auto b = make_cuda_backend();
  if (!b) {
    WARN("make_cuda_backend: " << b.status().to_string());
    CHECK(b.status().code() == Errc::kUnavailable);
    CHECK(!b.status().message().empty());
    return;
  }
  const ProbeReport& r = (*b)->probe();
  INFO("make_cuda_backend: " << r.message);
  WARN("make_cuda_backend: " << r.message);
  CHECK((*b)->kind() == BackendKind::kCuda);
  CHECK(r.driver);
  CHECK(!r.devices.empty());
}

TEST_CASE("cuda handles cannot be imported without a usable CUDA") {
  auto b = make_cuda_backend();
  if (b) return;  // a GPU machine: cuda_device_test imports real handles
  PoolExport e;
  e.type = HandleType::kCudaIpc;
  e.bytes = 2 << 20;
  auto r = import_pool(e);
  REQUIRE(!r.is_ok());
  WARN("import_pool(ipc): " << r.status().to_string());
  CHECK(r.status().code() != Errc::kOk);
}

TEST_CASE("a vmm import that fails still closes the received descriptor") {
  auto b = make_cuda_backend();
  if (b) return;  // a GPU machine: cuda_device_test imports real handles
  PoolExport e;
  e.type = HandleType::kVmmFd;
  e.bytes = 2 << 20;
  e.fd = ::memfd_create("not-a-vmm-handle", MFD_CLOEXEC);
  REQUIRE(e.fd >= 0);
  const int fd = e.fd;
  auto r = import_pool(e);
  REQUIRE(!r.is_ok());
  INFO(r.status().to_string());
  CHECK(r.status().code() == Errc::kUnavailable);
  CHECK(::fcntl(fd, F_GETFD) == -1);
}
