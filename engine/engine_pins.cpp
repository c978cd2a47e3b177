// Pins: blocks an operator or an engine keeps in one memory tier (docs/operations.md, "Pins").
//
// A pin is one lease of the engine's own on the block, in the tier it is pinned in: ArenaTier
// never picks a leased block as a capacity-eviction victim, so a pinned block is neither
// evicted nor demoted (a pinned GPU block is not copied down) while the pin holds, and the
// pin costs no field in the tier's per-block entry.  Pins live in Engine::pins_ (under mu_),
// not in a session: they outlive the connection that made them.  remove() drops the pin and
// removes the block; an admin eviction skips pinned blocks (they count as leased).
//
// TTL: an absolute expires_unix_ms (wall clock, so that it means the same after a restart).
// Expired pins are dropped by expire_pins_locked(): the daemon's sweep (every second,
// expire_pins()) and every put before it reserves space, so an expired pin never keeps a put
// from evicting its block.
//
// Durable namespaces (disk = "persist"): each pin, unpin, expiry sweep or remove that changes
// their pins rewrites <state_dir>/pins.json (docs/protocol.md, "Pin file"); restore_pins()
// re-pins them at start, promoting the blocks from the disk tier (a corrupt payload fails
// its checksum there and the pin is dropped: never served).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "engine/engine.h"
#include "common/names.h"

namespace kvtier {
namespace {

// The pin file's format (docs/protocol.md, "Pin file"): bump on any incompatible change.
constexpr const char* kPinFileFormat = "kvtier-pins";
constexpr uint32_t kPinFileVersion = 1;

std::filesystem::path pin_file(const config::Config& c) {
  return c.daemon.state_dir / "pins.json";
}

// Write to a temporary file, fsync, rename over the old one, fsync the directory: a crash
// leaves the old file or the new one, never a torn one.
Status write_atomic(const std::filesystem::path& path, const std::string& bytes) {
  const std::string tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return error(Errc::kIo, "open " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      Status s = error(Errc::kIo, "write " + tmp + ": " + std::strerror(errno));
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    Status s = error(Errc::kIo, "fsync " + tmp + ": " + std::strerror(errno));
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return error(Errc::kIo, "close " + tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return error(Errc::kIo, "rename " + path.string() + ": " + std::strerror(errno));
  int dfd = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

}  // namespace

uint64_t Engine::pin_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

boost::asio::awaitable<Result<Engine::PinResult>> Engine::pin(uint64_t sid, uint32_t ns,
                                                              std::vector<BlockKey> keys,
                                                              uint64_t ttl_ms, Placement where,
                                                              bool save) {
  // A key named twice is pinned once (and counted once).
  std::vector<BlockKey> unique;
  unique.reserve(keys.size());
  std::unordered_set<BlockKey, BlockKeyHash> seen;
  for (const BlockKey& k : keys)
    if (seen.insert(k).second) unique.push_back(k);
  // Lease every key where it is to be pinned, walking the ladder as a get does (promotion from
  // the disk or remote tier, copy down from a GPU, promotion into the GPU asked for); the
  // leases are turned into pins, or dropped, under one hold of the lock.
  std::vector<LeaseGrant> grants = co_await get(sid, ns, unique, where);
  Result<PinResult> r = pin_leased(sid, ns, grants, ttl_ms, where);
  if (r && save) {
    bool durable = false;
    {
      MutexLock lock(mu_);
      durable = durable_pins_locked(ns);
    }
    if (durable) save_pins();
  }
  co_return r;
}

Result<Engine::PinResult> Engine::pin_leased(uint64_t sid, uint32_t ns,
                                             std::span<const LeaseGrant> grants, uint64_t ttl_ms,
                                             Placement where) {
  MutexLock lock(mu_);
  Session* s = session(sid);
  if (s == nullptr) return error(Errc::kUnavailable, "session closed");
  const uint64_t now = pin_clock_ms();
  expire_pins_locked(now);
  PinResult r;
  r.quota_bytes = config_.pin_quota(*ns_rules_.at(ns));
  const uint64_t pinned_before = pinned_bytes_.count(ns) ? pinned_bytes_.at(ns) : 0;
  // Check everything first: all or nothing.
  Status refused;
  uint64_t adding = 0;
  for (const LeaseGrant& g : grants) {
    if (g.code != Errc::kOk) {
      refused =
          g.code == Errc::kNotFound
              ? error(Errc::kNotFound, "cannot pin block " + g.key.hex() +
                                           ": not cached in namespace '" + ns_names_.at(ns) + "'")
              : error(g.code, "cannot pin block " + g.key.hex() + ": " + errc_name(g.code));
      break;
    }
    if (where.gpu && g.tier != TierKind::kGpu) {
      refused = error(Errc::kNoSpace, "cannot pin block " + g.key.hex() +
                                          " in the GPU tier: no room there (leased or pinned "
                                          "blocks fill it)");
      break;
    }
    if (pins_.count(NsKey{ns, g.key}) == 0) adding += g.extent.bytes;
  }
  if (refused.is_ok() && pinned_before + adding > r.quota_bytes) {
    refused =
        error(Errc::kNoSpace, "pin quota of namespace '" + ns_names_.at(ns) +
                                  "' exceeded: " + mib(pinned_before) + " pinned + " + mib(adding) +
                                  " asked > " + mib(r.quota_bytes) +
                                  " ([[namespace]] pin_bytes = " + std::to_string(r.quota_bytes) +
                                  " bytes); unpin blocks or raise pin_bytes");
  }
  if (refused.is_ok()) {
    const uint64_t deadline = ttl_ms > 0 ? now + ttl_ms : 0;
    for (const LeaseGrant& g : grants) {
      const NsKey id{ns, g.key};
      auto [it, inserted] = pins_.try_emplace(id);
      if (!inserted) {
        // Refreshed: the TTL starts again (the tier it was pinned in stays).
        it->second.expires_unix_ms = deadline;
        ++r.refreshed;
      } else {
        const Session::Held& held = s->leases.at(g.lease_id);
        const BlockInfo* b = held.tier->acquire(id);  // the pin's own lease
        it->second = Pin{held.tier, b, deadline, g.tier == TierKind::kGpu ? g.device : -1};
        pinned_bytes_[ns] += b->extent.bytes;
      }
      if (deadline > 0) next_pin_expiry_ = std::min(next_pin_expiry_, deadline);
      ++r.pinned;
    }
  }
  for (const LeaseGrant& g : grants)
    if (g.code == Errc::kOk) drop_lease(*s, g.lease_id);
  if (!refused.is_ok()) {
    bump(metrics_.pin_refusals);
    return refused;
  }
  bump(metrics_.pins, r.pinned);
  r.pinned_bytes = pinned_bytes_.count(ns) ? pinned_bytes_.at(ns) : 0;
  return r;
}

uint32_t Engine::unpin(uint32_t ns, std::span<const BlockKey> keys) {
  uint32_t n = 0;
  bool durable = false;
  {
    MutexLock lock(mu_);
    for (const BlockKey& k : keys) n += drop_pin_locked(NsKey{ns, k});
    durable = durable_pins_locked(ns);
  }
  bump(metrics_.unpins, n);
  if (n > 0 && durable) save_pins();
  return n;
}

bool Engine::drop_pin_locked(const NsKey& id) {
  auto it = pins_.find(id);
  if (it == pins_.end()) return false;
  const Pin pin = it->second;
  pins_.erase(it);
  auto bytes = pinned_bytes_.find(id.ns);
  bytes->second -= pin.block->extent.bytes;
  if (bytes->second == 0) pinned_bytes_.erase(bytes);
  pin.tier->release(pin.block);  // may free a block removed meanwhile (doomed): last
  return true;
}

Engine::PinExpiry Engine::expire_pins_locked(uint64_t now) {
  PinExpiry e;
  if (now < next_pin_expiry_) return e;
  std::vector<NsKey> expired;
  uint64_t next = UINT64_MAX;
  for (const auto& [id, pin] : pins_) {
    if (pin.expires_unix_ms == 0) continue;
    if (pin.expires_unix_ms <= now) {
      expired.push_back(id);
    } else {
      next = std::min(next, pin.expires_unix_ms);
    }
  }
  for (const NsKey& id : expired) {
    e.durable |= durable_pins_locked(id.ns);
    drop_pin_locked(id);
  }
  next_pin_expiry_ = next;
  e.expired = static_cast<uint32_t>(expired.size());
  bump(metrics_.pins_expired, e.expired);
  return e;
}

uint32_t Engine::expire_pins(uint64_t now) {
  PinExpiry e;
  {
    MutexLock lock(mu_);
    e = expire_pins_locked(now);
  }
  if (e.durable) save_pins();
  return e.expired;
}

bool Engine::is_pinned(uint32_t ns, const BlockKey& key) const {
  MutexLock lock(mu_);
  return pins_.count(NsKey{ns, key}) > 0;
}

bool Engine::durable_pins_locked(uint32_t ns) const {
  return ns_rules_.at(ns)->disk == config::DiskPolicy::kPersist;
}

void Engine::save_pins() {
  MutexLock file(pins_file_mu_);
  auto pins = nlohmann::json::array();
  {
    MutexLock lock(mu_);
    for (const auto& [id, pin] : pins_) {
      if (!durable_pins_locked(id.ns)) continue;
      pins.push_back({{"namespace", ns_names_.at(id.ns)},
                      {"key", id.key.hex()},
                      {"tier", pin.device >= 0 ? "gpu" : "host"},
                      {"device", pin.device},
                      {"expires_unix_ms", pin.expires_unix_ms}});
    }
  }
  const nlohmann::json doc = {
      {"format", kPinFileFormat}, {"version", kPinFileVersion}, {"pins", pins}};
  if (Status st = write_atomic(pin_file(config_), doc.dump(1) + "\n"); !st)
    spdlog::warn("pins: cannot record durable pins: {}", st.to_string());
}

boost::asio::awaitable<uint32_t> Engine::restore_pins() {
  const std::filesystem::path path = pin_file(config_);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) co_return 0;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("format", "") != kPinFileFormat ||
      !doc.contains("pins") || !doc["pins"].is_array()) {
    spdlog::warn("pins: {} is not a pin file: ignored", path.string());
    co_return 0;
  }
  if (doc.value("version", 0u) != kPinFileVersion) {
    spdlog::warn("pins: {} has version {}, this kvtierd reads {}: ignored", path.string(),
                 doc.value("version", 0u), kPinFileVersion);
    co_return 0;
  }
  PeerInfo self;
  self.pid = ::getpid();
  self.uid = ::getuid();
  self.gid = ::getgid();
  self.comm = "kvtierd (pins)";
  const uint64_t sid = open_session(self);
  uint32_t restored = 0, dropped = 0;
  for (const nlohmann::json& e : doc["pins"]) {
    if (!e.is_object()) continue;
    const std::string name = e.value("namespace", "");
    const auto key = BlockKey::from_hex(e.value("key", ""));
    const uint64_t expires = e.value("expires_unix_ms", uint64_t{0});
    const int device = e.value("tier", "host") == "gpu" ? e.value("device", -1) : -1;
    const config::NamespaceRule* rule = config_.rule_for(name);
    if (!key || rule == nullptr || rule->disk != config::DiskPolicy::kPersist ||
        !check_name("namespace", name, kMaxNamespaceBytes)) {
      ++dropped;
      spdlog::warn("pins: pin of {} in '{}' dropped: no durable namespace rule covers it",
                   e.value("key", ""), name);
      continue;
    }
    const uint64_t now = pin_clock_ms();
    if (expires != 0 && expires <= now) continue;  // its TTL ended while kvtierd was down
    uint32_t ns = 0;
    {
      MutexLock lock(mu_);
      ns = intern_locked(name, rule);
    }
    Placement where;
    where.gpu = e.value("tier", "host") == "gpu";
    where.device = device;
    if (where.gpu && gpu_tier_for(ns, device) == nullptr) where = Placement{};
    // Named locals: GCC 12 rejects temporaries inside a co_await expression.
    std::vector<BlockKey> one(1, *key);
    const uint64_t ttl_ms = expires == 0 ? 0 : expires - now;
    Result<PinResult> r = co_await pin(sid, ns, std::move(one), ttl_ms, where, false);
    if (r) {
      ++restored;
    } else {
      ++dropped;
      spdlog::warn("pins: pin of {} in '{}' dropped at start: {}", key->hex(), name,
                   r.status().to_string());
    }
  }
  close_session(sid);
  spdlog::info("pins: {} restored from {}, {} dropped", restored, path.string(), dropped);
  save_pins();  // the file now lists what holds
  co_return restored;
}

}  // namespace kvtier
