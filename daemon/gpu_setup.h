// Opening the GPU tier at start: probe, pick the backend, create one pool per device.
#pragma once

#include "config/config.h"
#include "daemon/cache.h"

namespace kvtier {

// Never fails: what could not be opened is logged and reported in GpuSetup::status, and the
// daemon serves without it (DESIGN rule 8).  Per device: the shared pool of the default
// domain (gpu.size), then a pool per isolation domain with a gpu_size.  The host arenas of
// the domains that have pools (`hosts`, by domain) are registered with the backend so the
// device reads and writes them in place.
GpuSetup open_gpu_tier(const config::Config& config,
                       const std::vector<std::unique_ptr<HostTier>>& hosts);

}  // namespace kvtier
