// The remote tier: blocks in a Redis Cluster shared by the kvtierd of every host
// (docs/remote.md).  A StoreTier that answers only asynchronously: every Redis round trip runs
// on the tier's own worker threads (a boost::asio::thread_pool), never on an io thread and
// never under the engine's lock.
//
//   probe()         which keys the cluster holds: EXISTS of each block's first value,
//                   pipelined (one round trip per node involved)
//   locate_async()  fetches the whole value (part 0, then the other parts in one pipeline),
//                   checks header, namespace, key and payload checksum, and keeps the replies
//                   until read() copies them into the host tier (bounded by fetch_cache_bytes)
//   read()          decompresses / copies the fetched payload into dst and verifies every
//                   tensor's checksum
//   write()         queued (bounded by queue_bytes); a worker skips blocks the cluster holds
//                   already, else stores the parts, the header part last, with the namespace's
//                   TTL
//
// A value that fails any check is dropped (UNLINK), counted, and reported as a miss: never
// served.  A node that cannot be reached makes its keys misses until the cluster client's slot
// map finds their new owner; the tier reconnects by itself when the whole cluster was gone.
#pragma once
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/counters.h"
#include "common/latency_histogram.h"
#include "common/mutex.h"
#include "tiers/remote/redis_cluster.h"
#include "tiers/remote/remote_format.h"
#include "tiers/tier.h"

namespace kvtier {

class RemoteTier final : public StoreTier {
 public:
  struct Options {
    redis::ClusterConfig cluster;
    std::string key_prefix = "kvtier";
    uint32_t threads = 4;
    uint64_t max_value_bytes = 8ull << 20;
    uint64_t queue_bytes = 256ull << 20;
    uint64_t fetch_cache_bytes = 256ull << 20;  // fetched values waiting for their read()
    // At most one connection attempt per this interval while the cluster is unreachable.
    std::chrono::milliseconds reconnect_interval{1000};
  };
  // Never fails: when no seed answers, the tier starts disconnected (every call a miss or a
  // refused write) and connects on a later call.
  explicit RemoteTier(Options options);
  ~RemoteTier() override;

  // The namespace's name (keys and headers carry it) and the TTL of its values (0 = none).
  // Thread-safe; called by the engine when it interns a namespace.
  void name_namespace(uint32_t id, std::string_view name, uint32_t ttl_s);

  TierKind kind() const override { return TierKind::kRemote; }
  const char* name() const override { return "remote"; }
  bool contains(const NsKey&) const override { return false; }  // only probe() knows
  // Queues the deletion of every part; kRemoved once queued (the cluster is shared: other
  // hosts see the block gone), kNotFound for a namespace this tier has no name for.
  RemoveOutcome remove(const NsKey& id) override;
  // Does nothing: the cluster's blocks belong to every host and Redis evicts them itself
  // (maxmemory-policy allkeys-lru).  Admin eviction is local to a host.
  EvictCount evict_matching(const std::function<bool(const NsKey&)>&) override { return {}; }
  TierUsage usage() const override;

  bool durable() const override { return false; }
  Status write(const NsKey& id, const BlockLayout& layout, std::span<const std::byte> payload,
               bool compress, std::function<void(Status)> done) override;
  std::optional<StoredBlock> locate(const NsKey&) const override { return std::nullopt; }
  bool answers_locally() const override { return false; }
  void probe(uint32_t ns, std::span<const BlockKey> keys,
             std::function<void(std::vector<uint8_t> found)> done) override;
  void locate_async(const NsKey& id, std::function<void(std::optional<StoredBlock>)> done) override;
  void read(const StoredBlock& block, std::span<std::byte> dst,
            std::function<void(Status)> done) override;
  void flush() override;

  // Finishes the queued work and stops the workers; later calls are answered at once (misses,
  // refused writes).  For shutdown: after it, no callback of this tier runs any more.
  void stop();

  void visit_counters(CounterVisitor& v) const;
  nlohmann::json stats_json() const;  // counters, nodes and their state
  bool connected() const;

 private:
  struct Fetched;
  struct Counters {
    std::atomic<uint64_t> writes{0}, write_bytes{0}, write_errors{0}, writes_dropped{0},
        writes_skipped{0}, probes{0}, probe_keys{0}, probe_hits{0}, probe_errors{0}, fetches{0},
        hits{0}, misses{0}, read_bytes{0}, fetch_errors{0}, corrupt_dropped{0}, removes{0},
        remove_errors{0}, connects{0}, connect_failures{0};
  };

  // The cluster, connecting first when there is none (rate-limited; a caller that finds an
  // attempt under way waits for it); null when unreachable.
  std::shared_ptr<redis::Cluster> cluster();
  std::optional<std::string> ns_name(uint32_t id) const;
  uint32_t ns_ttl(uint32_t id) const;
  // The whole value of a block, checked; nullopt when absent, unreachable or bad (counted).
  std::shared_ptr<Fetched> fetch(const NsKey& id, const std::string& ns);
  Status store(const NsKey& id, const std::string& ns, const BlockLayout& layout,
               std::span<const std::byte> payload, bool compress);
  void drop_bad(redis::Cluster& c, const std::string& key, const Status& why);
  void remove_now(const std::string& ns, const BlockKey& key);

  const Options opt_;
  boost::asio::thread_pool pool_;
  mutable Counters n_;
  LatencyHistogram probe_latency_, fetch_latency_, write_latency_;
  std::atomic<uint64_t> queued_bytes_{0};
  std::atomic<bool> stopped_{false};
  // Runs `job` on a worker, or `refuse` at once after stop().
  void submit(std::function<void()> job, const std::function<void()>& refuse);

  mutable Mutex mu_;  // a leaf lock: nothing is called with it held but the maps' own code
  std::shared_ptr<redis::Cluster> cluster_ GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point next_connect_ GUARDED_BY(mu_){};
  bool connecting_ GUARDED_BY(mu_) = false;  // a connection attempt is under way
  CondVar connect_done_;                     // notified when it ends
  struct NsInfo {
    std::string name;
    uint32_t ttl_s = 0;
  };
  std::unordered_map<uint32_t, NsInfo> namespaces_ GUARDED_BY(mu_);
  std::unordered_set<NsKey, NsKeyHash> writing_ GUARDED_BY(mu_);
  // Fetched by locate_async() and not yet read(): by block, with the bytes they hold.
  std::unordered_map<NsKey, std::shared_ptr<Fetched>, NsKeyHash> fetched_ GUARDED_BY(mu_);
  uint64_t fetched_bytes_ GUARDED_BY(mu_) = 0;
  // Writes queued or running (flush() waits for 0).
  uint64_t in_flight_ GUARDED_BY(mu_) = 0;
  CondVar idle_;
};

}  // namespace kvtier
