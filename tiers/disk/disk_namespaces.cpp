// The disk tier's side of the engine's namespace ids (tiers/disk/disk_tier.h).
#include "tiers/disk/disk_tier.h"

#include <utility>

namespace kvtier {

void DiskTier::name_namespace(uint32_t id, std::string_view name) {
  MutexLock lock(names_mu_);
  if (names_.size() <= id) names_.resize(id + 1);
  names_[id] = std::string(name);
}

std::optional<std::string> DiskTier::name_of(uint32_t id) const {
  MutexLock lock(names_mu_);
  if (id >= names_.size() || names_[id].empty()) return std::nullopt;
  return names_[id];
}

Status DiskTier::write(const NsKey& id, const BlockLayout& layout,
                       std::span<const std::byte> payload, bool compress,
                       std::function<void(Status)> done) {
  auto name = name_of(id.ns);
  if (!name)
    return error(Errc::kInvalidArgument, "namespace id " + std::to_string(id.ns) + " has no name");
  return write(*name, id.key, layout, payload, compress, std::move(done));
}

std::optional<DiskEntry> DiskTier::find(const NsKey& id) const {
  auto name = name_of(id.ns);
  if (!name) return std::nullopt;
  return find(*name, id.key);
}

uint32_t DiskTier::id_of(std::string_view name) const {
  MutexLock lock(names_mu_);
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return static_cast<uint32_t>(i);
  return kUnnamedNamespace;
}

std::optional<StoredBlock> DiskTier::locate(const NsKey& id) const {
  auto e = find(id);
  if (!e) return std::nullopt;
  return StoredBlock{id, std::move(e->layout), e->payload_bytes, e->checksum};
}

void DiskTier::read(const StoredBlock& block, std::span<std::byte> dst,
                    std::function<void(Status)> done) {
  // Found again: compaction may have moved the entry since locate() (same bytes, same
  // checksum); an entry with another checksum is another copy.
  auto e = find(block.id);
  if (!e || e->checksum != block.version)
    return done(error(Errc::kNotFound, "disk tier: the block left the disk"));
  if (dst.size() < e->payload_bytes)
    return done(error(Errc::kInvalidArgument, "disk tier: the block outgrew its destination"));
  read(*e, dst, std::move(done));
}

RemoveOutcome DiskTier::remove(const NsKey& id) {
  auto name = name_of(id.ns);
  if (!name) return RemoveOutcome::kNotFound;
  return remove(*name, id.key).is_ok() ? RemoveOutcome::kRemoved : RemoveOutcome::kNotFound;
}

Tier::EvictCount DiskTier::evict_matching(const std::function<bool(const NsKey&)>& match) {
  // Names to ids once per distinct namespace, not per entry.
  std::string last_name;
  uint32_t last_id = kUnnamedNamespace;
  bool have_last = false;
  uint64_t bytes = 0;
  EvictCount c;
  c.evicted = evict_entries([&](const DiskEntry& e) {
    if (!have_last || e.ns != last_name) {
      last_name = e.ns;
      last_id = id_of(e.ns);
      have_last = true;
    }
    const bool hit = match(NsKey{last_id, e.key});
    if (hit) bytes += e.payload_bytes;
    return hit;
  });
  // Entries reclaimed by a concurrent writer between the scan and the drop are not counted
  // in `evicted`; `bytes` is what the matched entries held.
  c.bytes = bytes;
  return c;
}

}  // namespace kvtier
