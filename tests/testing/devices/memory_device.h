// The in-memory disk Device (tests and fuzzers only; not linked into kvtierd): region
// "files" are byte vectors in a MemoryDisk that outlives the device.
#pragma once

#include <memory>

#include "tiers/disk/device.h"

namespace kvtier {

// The bytes of an in-memory "disk"; shared so that a test can reopen a tier on the same bytes.
struct MemoryDisk;
std::shared_ptr<MemoryDisk> make_memory_disk();
std::unique_ptr<Device> make_memory_device(std::shared_ptr<MemoryDisk> disk);
// Test helper: truncates a region of an in-memory disk (a crash before the tail was written).
void truncate_memory_region(MemoryDisk& disk, uint32_t region, uint64_t bytes);

}  // namespace kvtier
