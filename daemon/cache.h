// The daemon's cache: namespaces, the tiers, and every session's leases and pending puts.
//
// Locking: one mutex, mu_, guards everything below it; it is held only for index and
// bookkeeping work (microseconds), never while block bytes are copied or encoded.  A pending
// put's reserved extent belongs to its session alone, so the session copies into it unlocked;
// a leased block's BlockInfo (and layout) is immutable and stays valid until the lease is
// released, so replies are built from it unlocked too.  Lock order: Cache::mu_ only.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/keys.h"
#include "common/layout.h"
#include "common/status.h"
#include "config/config.h"
#include "daemon/metrics.h"
#include "daemon/peer.h"
#include "tiers/host/host_tier.h"

namespace kvtier {

struct PendingPut {
  uint32_t ns = 0;
  BlockKey key;
  Extent extent;              // reserved in the host tier
  BlockLayout client_layout;  // tensors as the client wrote them into staging
  BlockLayout stored_layout;  // tensors as they will be stored (offsets, codecs)
  uint64_t staging_offset = 0;
};

struct LeaseGrant {
  BlockKey key;
  Errc code = Errc::kOk;
  uint64_t lease_id = 0;
  Extent extent;
  const BlockLayout* layout = nullptr;  // valid while the lease is held
};

class Cache {
 public:
  Cache(const config::Config& config, std::unique_ptr<HostTier> host, Metrics& metrics);
  ~Cache();

  HostTier& host() { return *host_; }
  const config::Config& config() const { return config_; }

  uint64_t open_session(const PeerInfo& peer);
  // Releases every lease and aborts every pending put of the session.
  void close_session(uint64_t sid);

  // Access check and interning; kPermissionDenied names the namespace and the peer.
  Result<uint32_t> resolve_namespace(std::string_view ns, const PeerInfo& peer);
  const config::NamespaceRule& rule_of(uint32_t ns) const;

  // Number of leading keys present in any tier.
  uint32_t lookup(uint32_t ns, std::span<const BlockKey> keys) const;

  Result<uint64_t> begin_put(uint64_t sid, PendingPut put);
  // A copy of the pending put (its extent stays reserved until seal or abort).
  Result<PendingPut> pending(uint64_t sid, uint64_t put_id) const;
  // Publishes the put with its final layout (checksums filled in).
  Status seal_put(uint64_t sid, uint64_t put_id, BlockLayout stored_layout);
  Status abort_put(uint64_t sid, uint64_t put_id);

  std::vector<LeaseGrant> get(uint64_t sid, uint32_t ns, std::span<const BlockKey> keys);
  uint32_t release(uint64_t sid, std::span<const uint64_t> lease_ids);

  struct RemoveCount {
    uint32_t removed = 0;
    uint32_t deferred = 0;
  };
  RemoveCount remove(uint32_t ns, std::span<const BlockKey> keys);
  // Admin eviction: by keys within a namespace, a whole namespace, or everything.
  Tier::EvictCount evict(std::optional<std::string> ns, std::span<const BlockKey> keys, bool all);

  nlohmann::json stats_json() const;
  nlohmann::json clients_json() const;
  nlohmann::json list_json(const std::string& ns_filter, uint32_t limit) const;
  uint64_t session_count() const;
  uint64_t leases_of(uint64_t sid) const;

 private:
  struct Session {
    PeerInfo peer;
    uint64_t connected_unix_ms = 0;
    uint64_t next_id = 1;
    std::unordered_map<uint64_t, const BlockInfo*> leases;
    std::unordered_map<uint64_t, PendingPut> puts;
    uint64_t leased_bytes = 0;
  };
  Session* session(uint64_t sid);                                     // requires mu_
  std::optional<uint32_t> find_namespace(std::string_view ns) const;  // requires mu_

  // Constant after construction.
  const config::Config config_;
  Metrics& metrics_;

  mutable std::mutex mu_;
  // Guarded by mu_.
  std::unique_ptr<HostTier> host_;
  std::vector<std::string> ns_names_;  // ns id -> name
  std::vector<const config::NamespaceRule*> ns_rules_;
  std::unordered_map<std::string, uint32_t> ns_ids_;
  std::unordered_map<uint64_t, Session> sessions_;
  uint64_t next_session_ = 1;
};

}  // namespace kvtier
