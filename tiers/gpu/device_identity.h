// Device identity across processes (docs/gpu.md, "Device identity").  CUDA numbers the devices
// a process sees through its own CUDA_VISIBLE_DEVICES, so index 0 of a client may be index 1 of
// kvtierd.  A device's UUID is the same in every process: the daemon puts each pool's UUID in
// its hello (GpuPoolInfo.uuid) and the client translates between its numbering and the
// daemon's with them.
//
// Linked into libkvtier (kvtier_gpu_import).  Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"
#include "tiers/gpu/device_backend.h"

namespace kvtier::gpu {

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi -L and CUDA_VISIBLE_DEVICES spell it.
std::string uuid_string(const DeviceUuid& u);

// The emulation's stand-in for the UUID of physical device `physical` (the same in every
// process): "GPU-6b767469-6572-656d-7567-7075" followed by the index in 8 hex digits.
DeviceUuid emulated_device_uuid(int physical);
// Emulated physical devices a CUDA_VISIBLE_DEVICES entry given as a UUID may name.
constexpr int kMaxEmulatedDevices = 64;

// CUDA_VISIBLE_DEVICES as the CUDA runtime reads it, over `physical` (the UUIDs of the
// machine's devices, in physical order): the physical index of each device the process sees,
// in its own numbering.  nullopt (the variable unset): every device, in order.  Entries are
// separated by commas; each is an index or a UUID prefix ("GPU-8e7a..."); the first entry that
// names no device, or one already named, ends the list (so "" and "-1" hide every device).
std::vector<int> visible_devices(std::optional<std::string_view> env,
                                 std::span<const DeviceUuid> physical);

// The UUIDs of the devices this process sees, in its numbering, for a daemon whose GPU
// backend is `kind`: CUDA asks the runtime (which applies CUDA_VISIBLE_DEVICES itself; it
// initialises the driver, not a context); the emulation applies this process's
// CUDA_VISIBLE_DEVICES to kMaxEmulatedDevices emulated devices.  kUnavailable when CUDA is
// not usable here (no driver, a build without CUDA).
Result<std::vector<DeviceUuid>> local_device_uuids(BackendKind kind);

// The CUDA half of local_device_uuids (cuda_import.cpp, or the stub without CUDA).
Result<std::vector<DeviceUuid>> cuda_device_uuids();

}  // namespace kvtier::gpu
