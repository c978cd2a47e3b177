// The disk tier's side of the engine's namespace ids (tiers/disk/disk_tier.h).
#include "tiers/disk/disk_tier.h"

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

Status DiskTier::remove(const NsKey& id) {
  auto name = name_of(id.ns);
  if (!name) return error(Errc::kNotFound, "not on disk");
  return remove(*name, id.key);
}

}  // namespace kvtier
