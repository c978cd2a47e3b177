// Device identity (tiers/gpu/device_identity.h): UUID spelling, CUDA_VISIBLE_DEVICES as the
// CUDA runtime reads it, and the emulation's device list.
#include <catch2/catch.hpp>

#include <cstdlib>

#include "tiers/gpu/device_identity.h"

using namespace kvtier;
using namespace kvtier::gpu;

namespace {

std::vector<DeviceUuid> physical(int n) {
  std::vector<DeviceUuid> out;
  for (int i = 0; i < n; ++i) out.push_back(emulated_device_uuid(i));
  return out;
}

std::vector<int> visible(const char* env, int n = 4) {
  const auto p = physical(n);
  return visible_devices(env ? std::optional<std::string_view>(env) : std::nullopt, p);
}

}  // namespace

TEST_CASE("device identity: UUIDs are spelled as nvidia-smi spells them") {
  CHECK(uuid_string(emulated_device_uuid(1)) == "GPU-6b767469-6572-656d-7567-707500000001");
  CHECK(uuid_string(emulated_device_uuid(0x12345678)) ==
        "GPU-6b767469-6572-656d-7567-707512345678");
  DeviceUuid u{};
  u[0] = 0xab;
  u[15] = 0x0f;
  CHECK(uuid_string(u) == "GPU-ab000000-0000-0000-0000-00000000000f");
  CHECK(emulated_device_uuid(2) != emulated_device_uuid(3));
}

TEST_CASE("device identity: CUDA_VISIBLE_DEVICES as the CUDA runtime reads it") {
  CHECK(visible(nullptr) == std::vector<int>{0, 1, 2, 3});  // unset: every device
  CHECK(visible("").empty());                               // set and empty: none
  CHECK(visible("2") == std::vector<int>{2});
  CHECK(visible("2,0") == std::vector<int>{2, 0});
  CHECK(visible(" 3 , 1 ") == std::vector<int>{3, 1});
  // The first entry that names no device ends the list.
  CHECK(visible("1,7,2") == std::vector<int>{1});
  CHECK(visible("-1,0").empty());
  CHECK(visible("1,x").empty() == false);
  CHECK(visible("1,x") == std::vector<int>{1});
  CHECK(visible("1,1,2") == std::vector<int>{1});  // a device named twice
  // UUIDs, whole or a unique prefix.
  CHECK(visible("GPU-6b767469-6572-656d-7567-707500000002") == std::vector<int>{2});
  CHECK(visible("GPU-6b767469-6572-656d-7567-707500000003,0") == std::vector<int>{3, 0});
  CHECK(visible("GPU-6b767469").empty());  // a prefix of every device: ambiguous
  CHECK(visible("GPU-").empty());
  CHECK(visible("GPU-ffff").empty());
}

TEST_CASE("device identity: the emulation's devices follow this process's CUDA_VISIBLE_DEVICES") {
  struct Env {
    explicit Env(const char* v) {
      if (v)
        ::setenv("CUDA_VISIBLE_DEVICES", v, 1);
      else
        ::unsetenv("CUDA_VISIBLE_DEVICES");
    }
    ~Env() { ::unsetenv("CUDA_VISIBLE_DEVICES"); }
  };
  {
    Env e(nullptr);
    auto all = local_device_uuids(BackendKind::kEmulation).value();
    REQUIRE(all.size() == static_cast<size_t>(kMaxEmulatedDevices));
    CHECK(all[5] == emulated_device_uuid(5));
  }
  {
    Env e("1,GPU-6b767469-6572-656d-7567-707500000000");
    auto two = local_device_uuids(BackendKind::kEmulation).value();
    CHECK(two == std::vector<DeviceUuid>{emulated_device_uuid(1), emulated_device_uuid(0)});
  }
  {
    Env e("");
    CHECK(local_device_uuids(BackendKind::kEmulation).value().empty());
  }
}

TEST_CASE("device identity: the emulation backend's devices carry their UUIDs") {
  auto b = make_emulation_backend(2, 4ull << 20);
  REQUIRE(b->probe().devices.size() == 2);
  CHECK(b->probe().devices[1].uuid == emulated_device_uuid(1));
}
