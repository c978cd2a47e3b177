#include "tiers/gpu/device_identity.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>

namespace kvtier::gpu {

std::string uuid_string(const DeviceUuid& u) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "GPU-";
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += kHex[u[i] >> 4];
    s += kHex[u[i] & 0xf];
  }
  return s;
}

DeviceUuid emulated_device_uuid(int physical) {
  DeviceUuid u{'k', 'v', 't', 'i', 'e', 'r', 'e', 'm', 'u', 'g', 'p', 'u'};
  const auto p = static_cast<uint32_t>(physical);
  u[12] = static_cast<uint8_t>(p >> 24);
  u[13] = static_cast<uint8_t>(p >> 16);
  u[14] = static_cast<uint8_t>(p >> 8);
  u[15] = static_cast<uint8_t>(p);
  return u;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The physical device an entry names, or -1.  A UUID prefix must name exactly one device.
int entry_device(std::string_view entry, std::span<const DeviceUuid> physical) {
  if (entry.starts_with("GPU-")) {
    if (entry.size() <= 4) return -1;
    int found = -1;
    for (size_t p = 0; p < physical.size(); ++p) {
      if (!uuid_string(physical[p]).starts_with(entry)) continue;
      if (found >= 0) return -1;  // ambiguous
      found = static_cast<int>(p);
    }
    return found;
  }
  int index = -1;
  const auto [end, ec] = std::from_chars(entry.data(), entry.data() + entry.size(), index);
  if (ec != std::errc() || end != entry.data() + entry.size()) return -1;
  return index >= 0 && static_cast<size_t>(index) < physical.size() ? index : -1;
}

}  // namespace

std::vector<int> visible_devices(std::optional<std::string_view> env,
                                 std::span<const DeviceUuid> physical) {
  std::vector<int> out;
  if (!env) {
    for (size_t p = 0; p < physical.size(); ++p) out.push_back(static_cast<int>(p));
    return out;
  }
  std::string_view rest = *env;
  while (true) {
    const size_t comma = rest.find(',');
    const int p = entry_device(trim(rest.substr(0, comma)), physical);
    if (p < 0 || std::find(out.begin(), out.end(), p) != out.end()) break;
    out.push_back(p);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

Result<std::vector<DeviceUuid>> local_device_uuids(BackendKind kind) {
  if (kind == BackendKind::kCuda) return cuda_device_uuids();
  std::vector<DeviceUuid> physical;
  for (int p = 0; p < kMaxEmulatedDevices; ++p) physical.push_back(emulated_device_uuid(p));
  const char* env = std::getenv("CUDA_VISIBLE_DEVICES");
  std::vector<DeviceUuid> out;
  for (int p : visible_devices(env ? std::optional<std::string_view>(env) : std::nullopt, physical))
    out.push_back(physical[p]);
  return out;
}

}  // namespace kvtier::gpu
