// The in-memory Device: region "files" are byte vectors in a MemoryDisk that outlives the
// device, so a test can close a tier and reopen it on the same bytes.  Transfers complete on
// the caller's thread.
#include <cstring>
#include <map>
#include <mutex>

#include "tests/testing/devices/memory_device.h"

namespace kvtier {

struct MemoryDisk {
  std::mutex mu;
  std::map<uint32_t, std::vector<std::byte>> regions;  // guarded by mu
};

std::shared_ptr<MemoryDisk> make_memory_disk() {
  return std::make_shared<MemoryDisk>();
}

void truncate_memory_region(MemoryDisk& disk, uint32_t region, uint64_t bytes) {
  std::lock_guard lock(disk.mu);
  auto it = disk.regions.find(region);
  if (it != disk.regions.end() && it->second.size() > bytes) it->second.resize(bytes);
}

namespace {

class MemoryDevice final : public Device {
 public:
  explicit MemoryDevice(std::shared_ptr<MemoryDisk> disk) : disk_(std::move(disk)) {}
  std::string describe() const override { return "memory"; }
  Status create_region(uint32_t r, uint64_t) override {
    std::lock_guard lock(disk_->mu);
    disk_->regions[r].clear();
    return {};
  }
  Status open_region(uint32_t r) override {
    std::lock_guard lock(disk_->mu);
    return disk_->regions.count(r) ? Status() : error(Errc::kIo, "open: no such region");
  }
  Status remove_region(uint32_t r) override {
    std::lock_guard lock(disk_->mu);
    disk_->regions.erase(r);
    return {};
  }
  std::vector<uint32_t> list_regions() override {
    std::lock_guard lock(disk_->mu);
    std::vector<uint32_t> out;
    for (auto& [id, bytes] : disk_->regions) out.push_back(id);
    return out;
  }
  Result<uint64_t> region_size(uint32_t r) override {
    std::lock_guard lock(disk_->mu);
    auto it = disk_->regions.find(r);
    if (it == disk_->regions.end()) return error(Errc::kNotFound, "no such region");
    return uint64_t(it->second.size());
  }
  Status sync(uint32_t) override { return {}; }
  void write(uint32_t r, uint64_t off, std::span<const std::byte> buf, IoDone done) override {
    {
      std::lock_guard lock(disk_->mu);
      auto it = disk_->regions.find(r);
      if (it == disk_->regions.end()) return done(error(Errc::kNotFound, "no such region"));
      auto& v = it->second;
      if (v.size() < off + buf.size()) v.resize(off + buf.size());
      std::memcpy(v.data() + off, buf.data(), buf.size());
    }
    done(buf.size());
  }
  void read(uint32_t r, uint64_t off, std::span<std::byte> buf, IoDone done) override {
    size_t n = 0;
    {
      std::lock_guard lock(disk_->mu);
      auto it = disk_->regions.find(r);
      if (it == disk_->regions.end()) return done(error(Errc::kNotFound, "no such region"));
      auto& v = it->second;
      if (off < v.size()) n = std::min<uint64_t>(buf.size(), v.size() - off);
      if (n) std::memcpy(buf.data(), v.data() + off, n);
    }
    done(n);
  }

 private:
  std::shared_ptr<MemoryDisk> disk_;
};

}  // namespace

std::unique_ptr<Device> make_memory_device(std::shared_ptr<MemoryDisk> disk) {
  return std::make_unique<MemoryDevice>(std::move(disk));
}

}  // namespace kvtier
