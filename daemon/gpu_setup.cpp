#include "daemon/gpu_setup.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace kvtier {

GpuSetup open_gpu_tier(const config::Config& config,
                       const std::vector<std::unique_ptr<HostTier>>& hosts) {
  const config::GpuTierConfig& c = config.gpu;
  // Pool bytes per domain (index = domain); 0: the domain has no pool.
  std::vector<uint64_t> pool_bytes = {c.size_bytes};
  for (const auto& a : config.arenas) pool_bytes.push_back(a.gpu_size_bytes);
  uint64_t device_bytes = 0;
  for (uint64_t b : pool_bytes) device_bytes += b;
  GpuSetup g;
  g.requested = c.backend;
  if (c.backend == "off") {
    g.status = "disabled (gpu.backend = \"off\")";
    spdlog::info("gpu tier: {}", g.status);
    return g;
  }
  std::vector<int> devices(c.devices.begin(), c.devices.end());
  if (c.backend == "emulation") {
    if (devices.empty()) devices = {0};
    const int count = *std::max_element(devices.begin(), devices.end()) + 1;
    g.backend = gpu::make_emulation_backend(count, device_bytes);
  } else {
    auto b = gpu::make_cuda_backend();
    if (!b) {
      g.status = "none: " + b.status().message();
      // "auto" on a host without a GPU is normal; "cuda" asked for one.
      if (c.backend == "cuda") {
        spdlog::warn("gpu tier: gpu.backend = \"cuda\" but {}; serving without a GPU tier",
                     b.status().message());
      } else {
        spdlog::info("gpu tier: {}", g.status);
      }
      return g;
    }
    g.backend = std::move(b).value();
  }
  const gpu::ProbeReport& probe = g.backend->probe();
  spdlog::info("gpu tier: backend {}: {}", g.backend->name(), probe.message);
  if (devices.empty())
    for (const auto& d : probe.devices) devices.push_back(d.index);

  for (size_t d = 0; d < hosts.size() && d < pool_bytes.size(); ++d) {
    if (pool_bytes[d] == 0) continue;
    const HostTier& host = *hosts[d];
    if (Status st = g.backend->register_host({host.data(Extent{}), host.arena().size()}); !st)
      spdlog::warn("gpu tier: host arena {} not registered ({}); copies go through a bounce buffer",
                   host.arena().name(), st.to_string());
  }
  std::string opened;
  for (int d : devices) {
    auto info = std::find_if(probe.devices.begin(), probe.devices.end(),
                             [&](const gpu::DeviceInfo& i) { return i.index == d; });
    if (info == probe.devices.end()) {
      spdlog::warn("gpu tier: device {} listed in gpu.devices does not exist; skipped", d);
      continue;
    }
    GpuTier::Options o;
    o.device = d;
    o.small_ratio = c.small_queue_ratio;
    if (g.backend->kind() == gpu::BackendKind::kEmulation) {
      o.handle = gpu::HandleType::kMemfd;
    } else if (c.handle == "vmm" && info->vmm) {
      o.handle = gpu::HandleType::kVmmFd;
    } else {
      if (c.handle == "vmm")
        spdlog::warn("gpu tier: device {} has no VMM fd support; exporting with cudaIpc", d);
      o.handle = gpu::HandleType::kCudaIpc;
    }
    bool shared_opened = false;
    for (size_t domain = 0; domain < pool_bytes.size(); ++domain) {
      if (pool_bytes[domain] == 0) continue;
      // Without the device's shared pool, the domains' pools are not tried either.
      if (domain > 0 && !shared_opened) break;
      o.bytes = pool_bytes[domain];
      o.domain = static_cast<uint32_t>(domain);
      const std::string what =
          domain == 0 ? "pool"
                      : "pool of isolation domain '" + config.arenas[domain - 1].name + "'";
      auto tier = GpuTier::create(*g.backend, o);
      if (!tier) {
        spdlog::error("gpu tier: device {} {}: {}; skipped", d, what, tier.status().to_string());
        continue;
      }
      spdlog::info("gpu tier: device {} ({}): {} MiB {}, handles {}", d, info->name,
                   (*tier)->pool().size() >> 20, what, gpu::handle_type_name(o.handle));
      if (domain == 0) {
        shared_opened = true;
        opened += (opened.empty() ? "" : ", ") + std::to_string(d);
      }
      g.tiers.push_back(std::move(tier).value());
    }
  }
  if (g.tiers.empty()) {
    g.status = std::string(g.backend->name()) + ": no pool could be created";
    spdlog::warn("gpu tier: {}; serving without a GPU tier", g.status);
    g.backend.reset();
    return g;
  }
  g.status = std::string(g.backend->name()) + ": device(s) " + opened + " x " +
             std::to_string(c.size_bytes >> 20) + " MiB; " + probe.message;
  return g;
}

}  // namespace kvtier
