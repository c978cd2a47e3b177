#include "engine/assembly.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "engine/json_text.h"

namespace kvtier {

std::vector<std::unique_ptr<HostTier>> open_host_tiers(const config::Config& config) {
  std::vector<std::unique_ptr<HostTier>> hosts;
  for (size_t d = 0; d <= config.arenas.size(); ++d) {
    HostTier::Options ho;
    ho.shm_name = d == 0 ? config.daemon.shm_prefix + "-host-0"
                         : config.daemon.shm_prefix + "-arena-" + config.arenas[d - 1].name;
    ho.arena_id = static_cast<uint32_t>(d);
    ho.bytes = d == 0 ? config.host.size_bytes : config.arenas[d - 1].size_bytes;
    ho.prefault = config.host.prefault;
    ho.small_ratio = config.host.small_queue_ratio;
    ho.ghost_entries = d == 0 ? config.host.ghost_entries : 0;
    auto host = HostTier::create(ho);
    if (!host) throw std::runtime_error("host tier: " + host.status().message());
    spdlog::info(
        "host tier{}: {} MiB in /dev/shm/{}{}, S3-FIFO eviction",
        d == 0 ? std::string() : " of isolation domain '" + config.arenas[d - 1].name + "'",
        ho.bytes >> 20, ho.shm_name, ho.prefault ? " (prefaulted)" : "");
    hosts.push_back(std::move(host).value());
  }
  return hosts;
}

std::pair<std::unique_ptr<DiskTier>, std::string> open_disk_tier(const config::Config& config,
                                                                 const EngineHooks& hooks) {
  if (!config.disk.enabled) {
    spdlog::info("disk tier: disabled by configuration");
    return {nullptr, "disabled (disk.enabled = false)"};
  }
  DiskOptions o;
  o.dir = config.disk_dir();
  o.capacity_bytes = config.disk.size_bytes;
  o.region_bytes = config.disk.region_bytes;
  o.write_queue_bytes = config.disk.write_queue_bytes;
  o.backend =
      config.disk.io_backend == config::DiskIoBackend::kIoUring   ? DiskOptions::Backend::kIoUring
      : config.disk.io_backend == config::DiskIoBackend::kThreads ? DiskOptions::Backend::kThreads
                                                                  : DiskOptions::Backend::kAuto;
  o.o_direct = config.disk.o_direct;
  o.threads = config.disk.threads;
  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Device> device;
  if (hooks.disk_device) {
    auto d = hooks.disk_device(o);
    if (!d) return {nullptr, "the test's disk device: " + d.status().to_string()};
    device = std::move(d).value();
  }
  auto disk = DiskTier::open(o, std::move(device));
  if (!disk) {
    // The engine runs with what it has (a missing part degrades the engine, it never stops it):
    // host tier only, and says why.
    spdlog::error("disk tier unavailable, serving without it: {}", disk.status().to_string());
    return {nullptr, "failed to open: " + disk.status().to_string()};
  }
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  DiskUsage u = (*disk)->disk_usage();
  spdlog::info("disk tier: {} blocks in {} ({} of {} MiB used), opened in {} ms, backend {}",
               u.blocks, o.dir.string(), u.used_bytes >> 20, o.capacity_bytes >> 20, ms,
               (*disk)->backend());
  if (u.dropped_at_open)
    spdlog::warn("disk tier: dropped {} entries of regions that were being written at a crash",
                 u.dropped_at_open);
  return {std::move(disk).value(), "open"};
}

std::unique_ptr<RemoteTier> open_remote_tier(const config::Config& config) {
  const config::RemoteTierConfig& c = config.remote;
  if (!c.enabled()) return nullptr;
  RemoteTier::Options o;
  o.cluster.seeds = c.seeds;
  o.cluster.password = c.password;
  o.cluster.connect_timeout = std::chrono::milliseconds(c.connect_timeout_ms);
  o.cluster.command_timeout = std::chrono::milliseconds(c.command_timeout_ms);
  o.cluster.connections_per_node = c.connections_per_node;
  o.key_prefix = c.key_prefix;
  o.threads = c.threads;
  o.max_value_bytes = c.max_value_bytes;
  o.queue_bytes = c.queue_bytes;
  std::string seeds;
  for (const std::string& seed : c.seeds) seeds += (seeds.empty() ? "" : ", ") + seed;
  spdlog::info("remote tier: Redis Cluster at {} (key prefix '{}', {} threads); connecting", seeds,
               c.key_prefix, c.threads);
  return std::make_unique<RemoteTier>(std::move(o));
}

std::unique_ptr<SemanticIndex> open_index(const config::Config& config) {
  if (!config.index.enabled) {
    spdlog::info("semantic index: disabled by configuration");
    return nullptr;
  }
  IndexOptions o;
  o.dir = config.daemon.state_dir / "index";
  o.exact_max_vectors = config.index.exact_max_vectors;
  o.nprobe = config.index.nprobe;
  auto index = SemanticIndex::open(o);
  if (!index) {
    spdlog::error("semantic index unavailable, serving without it: {}", index.status().to_string());
    return nullptr;
  }
  spdlog::info("semantic index: {}", json_text((*index)->stats()));
  return std::move(index).value();
}

std::unique_ptr<Engine> Engine::open(const config::Config& config, Metrics& metrics,
                                     EngineHooks hooks) {
  auto hosts = open_host_tiers(config);
  auto [disk, disk_status] = open_disk_tier(config, hooks);
  GpuSetup gpu = open_gpu_tier(config, hosts);
  return std::make_unique<Engine>(config, std::move(hosts), std::move(disk), std::move(disk_status),
                                  open_index(config), metrics, std::move(gpu),
                                  open_remote_tier(config));
}

GpuSetup open_gpu_tier(const config::Config& config,
                       const std::vector<std::unique_ptr<HostTier>>& hosts) {
  const config::GpuTierConfig& c = config.gpu;
  // Pool bytes per domain (index = domain); 0: the domain has no pool.
  std::vector<uint64_t> pool_bytes = {c.size_bytes};
  for (const auto& a : config.arenas) pool_bytes.push_back(a.gpu_size_bytes);
  uint64_t device_bytes = 0;
  for (uint64_t b : pool_bytes) device_bytes += b;
  GpuSetup g;
  g.requested = config::to_string(c.backend);
  if (c.backend == config::GpuBackend::kOff) {
    g.status = "disabled (gpu.backend = \"off\")";
    spdlog::info("gpu tier: {}", g.status);
    return g;
  }
  std::vector<int> devices(c.devices.begin(), c.devices.end());
  if (c.backend == config::GpuBackend::kEmulation) {
    if (devices.empty()) devices = {0};
    const int count = *std::max_element(devices.begin(), devices.end()) + 1;
    // Room for the device staging of 16 connections besides the pools (a memfd costs nothing
    // until written).
    g.backend =
        gpu::make_emulation_backend(count, device_bytes + 16 * config.session.device_staging_bytes);
  } else {
    auto b = gpu::make_cuda_backend();
    if (!b) {
      g.status = "none: " + b.status().message();
      // "auto" on a host without a GPU is normal; "cuda" asked for one.
      if (c.backend == config::GpuBackend::kCuda) {
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
    o.uuid = info->uuid;
    o.small_ratio = c.small_queue_ratio;
    if (g.backend->kind() == gpu::BackendKind::kEmulation) {
      o.handle = gpu::HandleType::kMemfd;
    } else if (c.handle == config::GpuHandle::kVmm && info->vmm) {
      o.handle = gpu::HandleType::kVmmFd;
    } else {
      if (c.handle == config::GpuHandle::kVmm)
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
