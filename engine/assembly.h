// Assembling the engine's parts from a Config (engine/assembly.cpp): the host arenas, the disk
// tier, the semantic index and the GPU tier.  Engine::open() calls these in that order.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "engine/engine.h"

namespace kvtier {

// One host tier per isolation domain: the default arena ([host]), then each [[arena]].
// Throws std::runtime_error naming the arena when one cannot be created.
std::vector<std::unique_ptr<HostTier>> open_host_tiers(const config::Config& config);

// The disk tier per config, or null with the reason (the engine then serves without it).
std::pair<std::unique_ptr<DiskTier>, std::string> open_disk_tier(const config::Config& config,
                                                                 const EngineHooks& hooks);

// The remote tier when [remote] seeds are set, else null.  Never fails: it connects in the
// background and serves misses until the cluster answers.
std::unique_ptr<RemoteTier> open_remote_tier(const config::Config& config);

// The semantic index, or null (logged) when disabled or broken.
std::unique_ptr<SemanticIndex> open_index(const config::Config& config);

// Never fails: what could not be opened is logged and reported in GpuSetup::status, and the
// engine serves without it (a missing part never stops it).  Per device: the shared pool of the
// default domain (gpu.size), then a pool per isolation domain with a gpu_size.  The host arenas of
// the domains that have pools (`hosts`, by domain) are registered with the backend so the
// device reads and writes them in place.
GpuSetup open_gpu_tier(const config::Config& config,
                       const std::vector<std::unique_ptr<HostTier>>& hosts);

}  // namespace kvtier
