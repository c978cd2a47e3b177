// Opening the GPU tier at start: probe, pick the backend, create one pool per device.
#pragma once

#include "config/config.h"
#include "daemon/cache.h"

namespace kvtier {

// Never fails: what could not be opened is logged and reported in GpuSetup::status, and the
// daemon serves without it (DESIGN rule 8).  `host` is registered with the backend so the
// device reads and writes the host arena in place.
GpuSetup open_gpu_tier(const config::GpuTierConfig& config, HostTier& host);

}  // namespace kvtier
