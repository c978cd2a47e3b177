// The engine: the cache without its transports.  It owns the namespaces, the tiers (one
// host tier per isolation domain, the GPU tiers, the disk tier), the semantic index, and every
// session's leases and pending puts, and it runs the tier ladder (lookup, get with placement,
// promotion from disk and into a GPU, demotion, copy down, persist).  The daemon (daemon/)
// decodes a request, makes one engine call and encodes the reply; tests link the engine
// in-process (engine/tests/).
//
// Locking: one mutex, mu_, guards everything below it; it is held only for index and
// bookkeeping work (microseconds), never while block bytes are copied or encoded.  A pending
// put's reserved extent belongs to its session alone, so the session copies into it unlocked;
// a leased block's BlockInfo (and layout) is immutable and stays valid until the lease is
// released, so replies are built from it unlocked too.  Lock order: Engine::mu_ only.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include <nlohmann/json.hpp>

#include "common/counters.h"
#include "common/lookup_index.h"
#include "common/mutex.h"
#include "kvtier/keys.h"
#include "common/layout.h"
#include "kvtier/status.h"
#include "config/config.h"
#include "engine/block_codec.h"
#include "engine/block_events.h"
#include "engine/codec_counters.h"
#include "engine/metrics.h"
#include "engine/peer.h"
#include "index/semantic_index.h"
#include "tiers/disk/disk_tier.h"
#include "tiers/gpu/device_backend.h"
#include "tiers/gpu/gpu_tier.h"
#include "tiers/host/host_tier.h"
#include "tiers/remote/remote_tier.h"

namespace kvtier {

struct PendingPut {
  uint32_t ns = 0;
  BlockKey key;
  Extent extent;              // reserved in the host tier, or in gpu_device's GPU tier
  int gpu_device = -1;        // >= 0: the block lands in that device's GPU tier, stored raw
  BlockLayout client_layout;  // tensors as the client wrote them into staging
  BlockLayout stored_layout;  // tensors as they will be stored (offsets, codecs)
  // Fusion puts: the chunk's current block, leased by this session until seal or abort; the
  // new block (base tensors + fusion tensors) replaces it at seal.
  bool fusion = false;
  uint64_t base_lease = 0;
  Extent base_extent;
  BlockLayout base_layout;
  std::vector<std::byte> metadata;
};

// A promotion from the disk tier to the host tier in flight: later requests for the same
// block wait for it instead of reading the block again.
class Promotion {
 public:
  // Calls fn(result) once the promotion completes (at once if it has).
  void wait(std::function<void(Status)> fn);
  void complete(Status result);

 private:
  Mutex mu_;
  bool done_ GUARDED_BY(mu_) = false;
  Status result_ GUARDED_BY(mu_);
  std::vector<std::function<void(Status)>> waiters_ GUARDED_BY(mu_);
};

struct PromotionTicket {
  std::shared_ptr<Promotion> promotion;
  bool leader = false;        // this request reads the block; the others wait on `promotion`
  Extent extent;              // host space reserved for it (leader only)
  StoreTier* from = nullptr;  // the store it is read from (leader only)
  StoredBlock block;          // what that store holds (leader only)
};

struct LeaseGrant {
  BlockKey key;
  Errc code = Errc::kOk;
  uint64_t lease_id = 0;
  Extent extent;
  LayoutView layout;                // valid while the lease is held
  TierKind tier = TierKind::kHost;  // kGpu: extent.arena is the device's pool id
  int device = -1;                  // the GPU of a kGpu lease
  // kGpu: the pool's ready event (slot, from 1) the block's bytes wait on: an async promotion
  // still in flight (docs/gpu.md, "Async gets"); 0: ready.
  uint32_t ready_event = 0;
};

// Where a get wants its blocks: host memory (the host tier's format) or one GPU's memory.
struct Placement {
  bool gpu = false;
  int device = -1;  // gpu: the device; -1 = the first GPU tier
  // gpu: promotions may still run on the device when the grants go back (their ready_event
  // says which event to wait on).
  bool async = false;
};

// The hot tier as the server opened it: the backend (null without one), one GpuTier per
// device, and one line saying what was found ("cuda: 2 devices, VMM", "no CUDA driver ...").
struct GpuSetup {
  std::unique_ptr<gpu::DeviceBackend> backend;
  std::vector<std::unique_ptr<GpuTier>> tiers;
  std::string status;
  std::string requested;  // gpu.backend as configured
};

// What a test (or the test build of kvtierd, tests/testing/kvtierd_test_main.cpp) may put in
// place of the engine's own parts.  The product passes none.
struct EngineHooks {
  // The disk tier's Device (e.g. tests/testing/devices/: in memory, fault-injecting); unset:
  // the tier opens files through disk.io_backend.
  std::function<Result<std::unique_ptr<Device>>(const DiskOptions&)> disk_device;
};

class Engine {
 public:
  // Assembles the engine from the configuration: one host tier (shared-memory arena) per
  // isolation domain, the disk tier, the semantic index and the GPU tier.  Throws
  // std::runtime_error when a host arena cannot be created; a disk tier, index or GPU tier
  // that cannot be opened is logged and left out (the engine serves without it, and
  // disk_status()/gpu_status() say why).  The state directory must exist.
  static std::unique_ptr<Engine> open(const config::Config& config, Metrics& metrics,
                                      EngineHooks hooks = {});

  // `hosts`: one host tier per isolation domain, in config::Config::domain_of order (the
  // default arena first).  `disk` may be null (disabled, or it failed to open: `disk_status`
  // says why).
  Engine(const config::Config& config, std::vector<std::unique_ptr<HostTier>> hosts,
         std::unique_ptr<DiskTier> disk, std::string disk_status,
         std::unique_ptr<SemanticIndex> index, Metrics& metrics, GpuSetup gpu = {},
         std::unique_ptr<RemoteTier> remote = nullptr);
  ~Engine();

  // The default domain's host tier (the [host] arena).
  HostTier& host() { return *hosts_[0]; }
  // Every domain's host tier, by domain index (constant after construction; each tier is
  // guarded by mu_, its arena's base and size are constant).
  const std::vector<std::unique_ptr<HostTier>>& host_tiers() const { return hosts_; }
  // The host tier of the namespace's isolation domain.
  HostTier& host_of(uint32_t ns);
  // The isolation domain of a namespace (its index in host_tiers()).
  uint32_t domain_of(uint32_t ns) const;
  // The GPU tier of `device` for a namespace's blocks: its isolation domain's pool on that
  // device, or null.  Blocks of one domain never enter another domain's pools.
  GpuTier* gpu_tier_for(uint32_t ns, int device) const { return gpu_tier(device, domain_of(ns)); }
  // Whether `peer` may map the arena of `domain`: some namespace rule of that domain allows
  // it (the same rule that lets it read the domain's namespaces).
  bool may_map(const PeerInfo& peer, size_t domain) const;
  // Thread-safe on its own (tiers/disk/disk_tier.h); null when there is no disk tier.
  DiskTier* disk() { return disk_.get(); }
  const std::string& disk_status() const { return disk_status_; }
  // Waits for every store's queued writes and stops the remote tier's workers: after it no
  // store callback runs (the daemon calls it while its io_contexts still exist).  Idempotent.
  void quiesce_stores();
  // The remote tier, or null without [remote] seeds.  Thread-safe itself.
  RemoteTier* remote() const { return remote_.get(); }
  // The GPU tiers (constant after construction; each tier is guarded by mu_, its pool is
  // thread-safe).  Null/empty without a GPU tier.
  gpu::DeviceBackend* gpu_backend() const { return gpu_.backend.get(); }
  const std::vector<std::unique_ptr<GpuTier>>& gpu_tiers() const { return gpu_.tiers; }
  const std::string& gpu_status() const { return gpu_.status; }
  // The GPU tier of `device` (-1: the first; other negatives: none) holding isolation domain
  // `domain`'s blocks, or null (a domain without gpu_size has none).
  GpuTier* gpu_tier(int device, uint32_t domain = 0) const;
  const std::string& namespace_name(uint32_t ns) const;
  const config::Config& config() const { return config_; }

  uint64_t open_session(const PeerInfo& peer);
  // The session's requests now come through a shared-memory request channel (`clients`).
  void mark_channel(uint64_t sid);
  // Releases every lease and aborts every pending put of the session.
  void close_session(uint64_t sid);

  // Access check and interning; kPermissionDenied names the namespace and the peer.
  Result<uint32_t> resolve_namespace(std::string_view ns, const PeerInfo& peer);
  const config::NamespaceRule& rule_of(uint32_t ns) const;

  // --- One call per request.  The coroutines run on the caller's executor; the engine's lock
  // is never held across a suspension (disk reads, persist waits). ---

  // The number of leading keys present in any tier and, with_fusion, a lease on the last
  // matched chunk when it carries fusion state (one round trip for the common path).  When the
  // local tiers miss and the namespace uses the remote tier, the keys after the local prefix
  // are probed there in one batch (at most remote.lookup_timeout_ms; unanswered = a miss),
  // unless local_only.
  struct LookupResult {
    uint32_t matched = 0;
    std::optional<LeaseGrant> fusion;
  };
  boost::asio::awaitable<LookupResult> lookup(uint64_t sid, uint32_t ns, std::vector<BlockKey> keys,
                                              bool with_fusion, bool local_only = false);

  // Leases every key in the place asked for, walking the ladder: a hit in the wanted GPU, a
  // hit in the host tier, a copy down from another GPU, a promotion from the disk tier into
  // the host tier (concurrent readers of one block share one read); then, for a GPU
  // placement, host hits move on to the device (they stay host leases when it has no room).
  // Misses come back kNotFound; kLimit past session.max_leases.
  boost::asio::awaitable<std::vector<LeaseGrant>> get(uint64_t sid, uint32_t ns,
                                                      std::vector<BlockKey> keys,
                                                      Placement where = {});
  // A lease on a chunk that carries fusion state: kNotFound "... is not cached" or
  // "... has no fusion state" (nothing stays leased then).
  boost::asio::awaitable<Result<LeaseGrant>> get_fusion(uint64_t sid, uint32_t ns, BlockKey key);

  // A put: where the block lands (a GPU tier for fp16/bf16 when asked and the namespace does
  // not persist; else the host tier in the namespace's format) and its stored layout are
  // planned here, once, and the space is reserved.  A fusion put leases its chunk (promoting
  // it from disk when needed) until seal or abort.  Returns the put id.
  struct PutRequest {
    uint32_t ns = 0;
    BlockKey key;
    BlockLayout client_layout;  // validated by the caller (validate_put_layout)
    int device = -1;            // the GPU a client asked for (-1: the first)
    bool fusion = false;
    std::vector<std::byte> metadata;  // fusion only, <= kMaxFusionMetadataBytes
  };
  boost::asio::awaitable<Result<uint64_t>> begin_put(uint64_t sid, PutRequest put);
  // Encodes the staged bytes (laid out as the put's client layout; client-writable memory, so
  // read once and checksummed after the copy) into the reserved space, publishes the block,
  // and for persist namespaces answers once it is durable on the disk tier (all or nothing).
  // Returns the stored bytes.  Any failure aborts the put.
  boost::asio::awaitable<Result<uint64_t>> seal(uint64_t sid, uint64_t put_id,
                                                std::span<const std::byte> staged);
  // seal() of a put the client staged in device memory: `bytes` at `offset` of `staging` (a
  // connection's device staging, docs/gpu.md "Device puts").  A block for a GPU tier is
  // copied device to device into its reserved extent (its tensors carry checksum 0: the
  // device does not hash them); any other is read back to the host and sealed as seal() does.
  boost::asio::awaitable<Result<uint64_t>> seal_from_device(uint64_t sid, uint64_t put_id,
                                                            gpu::DevicePool& staging,
                                                            uint64_t offset, uint64_t bytes);
  // A connection's device staging on `device` (the daemon's numbering), exported writable to
  // that connection only: a pool of the backend of the GPU tiers, created on demand.
  // kInvalidArgument when no GPU tier serves that device.
  Result<std::unique_ptr<gpu::DevicePool>> create_device_staging(int device, uint64_t bytes);
  Status abort_put(uint64_t sid, uint64_t put_id);

  // In any tier.
  bool is_cached(uint32_t ns, const BlockKey& key) const;
  // is_cached() of each key into out[i] (1 or 0), under one hold of mu_ (the lookups' cache
  // misses overlap instead of queueing behind a lock round trip each).
  void cached(uint32_t ns, std::span<const BlockKey> keys, std::span<uint8_t> out) const;
  // The semantic index (index/semantic_index.h); thread-safe itself, never called with mu_ held
  // (its search calls is_cached, which takes mu_).  Null when it could not be opened.
  SemanticIndex* index() { return index_.get(); }

  uint32_t release(uint64_t sid, std::span<const uint64_t> lease_ids);

  struct RemoveCount {
    uint32_t removed = 0;
    uint32_t deferred = 0;
    bool durable_unpinned = false;  // a durable namespace's pin went with a removed block
  };
  // From every tier, and the chunks' embedding entries from the semantic index.
  RemoveCount remove(uint32_t ns, std::span<const BlockKey> keys);
  // Admin eviction: by keys within a namespace, a whole namespace, or everything, from the
  // host tier, the disk tier or both.  Nothing evicted this way is demoted.
  struct EvictCount {
    Tier::EvictCount host;
    uint64_t disk = 0;
    Tier::EvictCount gpu;
  };
  EvictCount evict(std::optional<std::string> ns, std::span<const BlockKey> keys, bool all,
                   bool host, bool disk, bool gpu = false);

  // --- Pins (engine/engine_pins.cpp, docs/operations.md "Pins").  A pin keeps a cached block
  // in one memory tier (the host tier, or a GPU tier) from capacity eviction and demotion
  // until unpin(), remove(), or its TTL ends.  Pins belong to the engine, not to a session:
  // they outlive the connection that made them. ---

  struct PinResult {
    uint32_t pinned = 0;        // keys pinned by the request (refreshed ones included)
    uint32_t refreshed = 0;     // of them, keys pinned already (their TTL restarts)
    uint64_t pinned_bytes = 0;  // the namespace's pinned bytes after the request
    uint64_t quota_bytes = 0;   // its quota (config::Config::pin_quota)
  };
  // Pins `keys` (all or nothing) in the host tier, or in a GPU tier (where.gpu).  A key only
  // a lower tier holds (the disk tier, the remote tier, another GPU) is promoted into that
  // tier first, as get() does.  ttl_ms 0: no expiry.  kNotFound when a key is not cached
  // anywhere; kNoSpace when the namespace's pin quota ([[namespace]] pin_bytes) would be
  // exceeded or a GPU tier has no room for a key; nothing of the request is pinned then.
  // `sid` is the session whose lease limit the promotion counts against for a moment.
  // save: rewrite the pin file when the namespace is durable (restore_pins() does it once).
  boost::asio::awaitable<Result<PinResult>> pin(uint64_t sid, uint32_t ns,
                                                std::vector<BlockKey> keys, uint64_t ttl_ms,
                                                Placement where = {}, bool save = true);
  // Drops the pins of `keys` (keys not pinned are skipped); returns how many were pinned.
  uint32_t unpin(uint32_t ns, std::span<const BlockKey> keys);
  // Drops the pins whose TTL ended by `now_unix_ms` (the daemon's sweep timer; puts also
  // check before they reserve).  Returns how many.
  uint32_t expire_pins(uint64_t now_unix_ms);
  // Whether the block is pinned (in any tier) now.
  bool is_pinned(uint32_t ns, const BlockKey& key) const;
  // The pins' clock: unix ms (a TTL means the same after a restart).
  static uint64_t pin_clock_ms();
  // Re-pins what the pin file (<state_dir>/pins.json, docs/protocol.md "Pin file") recorded
  // for durable namespaces, once the disk tier has recovered their blocks: at start, before
  // the daemon serves.  Pins whose block is gone, corrupt or expired are dropped (logged).
  // Returns how many were restored.
  boost::asio::awaitable<uint32_t> restore_pins();

  // Every part's counters and gauges through one visitor (engine/engine_counters.cpp): each
  // host arena and GPU pool (tiers/tier_counters.h), the disk tier, the semantic index, the
  // sessions, the daemon's counters and request latencies (Metrics), the codec and the NF4
  // error samples.  GET /metrics renders this; stats_json() is the same parts, each into its
  // own object of the JSON.
  void visit_counters(CounterVisitor& v) const;
  nlohmann::json stats_json() const;
  // The GPU tier: what the probe found, and each pool's usage (stats and health).
  nlohmann::json gpu_json() const;
  nlohmann::json clients_json() const;
  // fusion_only: just the chunks that carry fusion state (host tier; the disk keeps the
  // layout too).
  // pinned_only: just the pinned blocks.  Each entry says whether it is pinned ("pinned", and
  // "pin_expires_unix_ms", 0 = no expiry).
  nlohmann::json list_json(const std::string& ns_filter, uint32_t limit, bool fusion_only = false,
                           bool pinned_only = false) const;
  uint64_t session_count() const;
  uint64_t leases_of(uint64_t sid) const;

  // KV events (engine/block_events.h, docs/events.md): every block stored in or removed from a
  // tier is reported to `sink`.  Set once, before the engine serves; the sink outlives it.
  void set_event_sink(BlockEventSink* sink);

  // Tests: called without mu_ for each batch of copy downs (a GPU block's copy to the host
  // tier: GPU evictions, engine/gpu_ladder.cpp, and host gets of GPU-only blocks), after the
  // device work and before the copies are published.  Set once, before the engine serves.
  // Test hook: while held, completed async promotions are not applied (their blocks keep
  // their ready events, their host blocks stay held), as on a device that is still working.
  void hold_completions(bool held);
  void set_copy_down_observer(std::function<void(std::span<const NsKey>)> fn);

  // The shared lookup index (engine/engine_index.cpp, docs/protocol.md "Lookup index"): with
  // daemon.lookup_index, one LookupIndex per isolation domain listing the blocks of its
  // namespaces that the GPU, host and disk tiers hold (the remote tier is not listed).  Opened
  // once, before the engine serves; the blocks the disk tier recovered are listed then (their
  // namespaces interned).  Throws std::runtime_error when a memfd cannot be created.
  void open_lookup_index(const BlockKey& instance);
  // The index of `domain`, or null (lookup_index off, or no such domain).  Thread-safe itself.
  LookupIndex* lookup_index(uint32_t domain) const;
  // The daemon stops: every index is marked stopped, so clients stop answering from it.
  void retire_lookup_index();
  // The daemon's liveness page, handed with each index (null when lookup_index is off).
  const DaemonLiveness* liveness() const { return liveness_.get(); }

 private:
  // The ladder's steps (engine/engine.cpp, engine/gpu_ladder.cpp: lease_cached).
  uint32_t prefix_cached(uint32_t ns, std::span<const BlockKey> keys) const;
  // Leases what is cached in the place asked for (one hold of mu_, two when a copy down is
  // needed).  A host get of a block that only a GPU tier holds copies it down into the host
  // tier first (NF4 quantized on the device, with mu_ released and the GPU block leased
  // meanwhile).  A GPU get leases blocks in that GPU; the others come back as host leases (or
  // kNotFound), for promote_to_gpu().
  std::vector<LeaseGrant> lease_cached(uint64_t sid, uint32_t ns, std::span<const BlockKey> keys,
                                       Placement where);
  // A block only a store tier has, read into the host tier and leased (or kNotFound).
  boost::asio::awaitable<LeaseGrant> promote_from_store(uint64_t sid, uint32_t ns, BlockKey key);
  // For a key lease_cached() missed: when a store that answers locally holds it (the first in
  // stores_ order), reserves host space and makes this request the leader of its promotion, or
  // joins the promotion already in flight.  kNotFound when no such store has it either.
  Result<PromotionTicket> begin_promotion(uint32_t ns, const BlockKey& key);
  // The locked half of begin_promotion(), for a block `from` located (the remote tier's
  // locate_async() runs before it, without the lock).
  Result<PromotionTicket> claim_promotion(uint32_t ns, const BlockKey& key, StoreTier* from,
                                          StoredBlock stored);
  // Whether a store that answers locally is writing the block (a demotion not landed yet).
  bool store_writing(const NsKey& id) const;
  // The remote tier when the namespace uses it (rule remote != "off"), else null.
  RemoteTier* remote_for(uint32_t ns) const;
  // Namespaces with remote = "writethrough": queues the sealed host block for the cluster.
  void write_through(uint32_t ns, const BlockKey& key);
  // The leader's end of a promotion: publishes the block read into ticket.extent (read ok)
  // or gives the space back, wakes the waiters, and leases the block to `sid` when published.
  LeaseGrant finish_promotion(uint64_t sid, uint32_t ns, const BlockKey& key,
                              const PromotionTicket& ticket, Status read);
  // Turns each host lease of `grants` into a lease on the same block in `device`'s GPU tier,
  // in place, as one batch: reserves pool space for all (one hold of mu_), dequantizes/copies
  // them without the lock (promote_blocks: on CUDA one synchronisation for the batch),
  // publishes them (one more hold), and drops the host leases.  A block the GPU tier has no
  // room for keeps its host grant.
  // With `async`, the device's decodes are queued and the grants carry the event that
  // completes with them (the host blocks stay held by the engine until it does).
  void promote_to_gpu(uint64_t sid, uint32_t ns, std::span<LeaseGrant> grants, int device,
                      bool async);
  // Namespaces with disk = "persist": queues the sealed block for the durable store (the disk
  // tier); done(status) runs once it is durable.  Returns ok when done will be called.
  Status persist(uint32_t ns, const BlockKey& key, std::function<void(Status)> done);
  Result<uint64_t> reserve_put(uint64_t sid, PendingPut put);
  RemoveCount remove_from_tiers(uint32_t ns, std::span<const BlockKey> keys);
  // A copy of the pending put (its extent stays reserved until seal or abort).
  Result<PendingPut> pending(uint64_t sid, uint64_t put_id) const;
  // Publishes the put with its final layout (checksums filled in).
  Status seal_put(uint64_t sid, uint64_t put_id, BlockLayout stored_layout);

  struct Session {
    PeerInfo peer;
    uint64_t connected_unix_ms = 0;
    bool channel = false;  // a request channel is open
    uint64_t next_id = 1;
    struct Held {
      MemoryTier* tier = nullptr;
      const BlockInfo* block = nullptr;
    };
    std::unordered_map<uint64_t, Held> leases;
    std::unordered_map<uint64_t, PendingPut> puts;
    uint64_t leased_bytes = 0;
  };
  Session* session(uint64_t sid) REQUIRES(mu_);
  bool drop_lease(Session& s, uint64_t lease_id) REQUIRES(mu_);  // false if s has no such lease
  std::optional<uint32_t> find_namespace(std::string_view ns) const REQUIRES(mu_);

  // Capacity eviction from the host tier: hands the block to the store that takes the
  // namespace's write-back (demotion_store()).
  void demote(const BlockInfo& block, std::span<const std::byte> bytes) REQUIRES(mu_);
  // The store a namespace's evicted host blocks go to (the disk tier unless its rule says
  // disk = "off"), or null.
  StoreTier* demotion_store(const config::NamespaceRule& rule) const;
  // The ladder's tiers for a namespace's blocks: its domain's GPU tiers, then its host tier
  // (memory_ladder_), then the stores.
  const std::vector<MemoryTier*>& memory_tiers_locked(uint32_t ns) const REQUIRES(mu_);
  // Whether any tier of the ladder holds the block.
  bool held_locked(const NsKey& id) const REQUIRES(mu_);
  // Interns a namespace name under `rule` (resolve_namespace() checked access).
  uint32_t intern_locked(std::string_view ns, const config::NamespaceRule* rule) REQUIRES(mu_);
  // Copy downs out of mu_ (docs/internals.md, "Copy down"): a GPU reservation's evictions are
  // queued as CopyDowns (a host extent reserved, the victim's layout and place noted).  The
  // victims whose places lie inside the extent the reservation returns are copied by the
  // reserving thread after it releases mu_ and before it writes that extent (no one else
  // can write there); the others at once, under mu_, as their places are free again.
  struct CopyDown {
    NsKey id;
    uint64_t ticket = 0;  // copying_down_[id] while no remove or admin eviction dropped it
    GpuTier* tier = nullptr;
    BlockLayout gpu_layout;
    Extent gpu_extent;
    HostTier* host = nullptr;
    Extent host_extent;
    BlockLayout host_layout;
    Nf4Options nf4;
  };
  // GpuTier::reserve() with its evictions' copy downs: those inside the returned extent are
  // appended to `deferred` (run them with finish_copy_downs() before writing the extent).
  Result<Extent> reserve_gpu_locked(GpuTier& tier, uint64_t bytes, std::vector<CopyDown>& deferred)
      REQUIRES(mu_);
  // A copy down of `block` planned: a host extent reserved, the block's layout and place
  // noted, its ticket in copying_down_.  Nothing when the host tier has no room.
  std::optional<CopyDown> prepare_copy_down(GpuTier& tier, const BlockInfo& block) REQUIRES(mu_);
  // The device work of copy downs: each victim's bytes quantized into its host extent, one
  // quantize batch per pool (engine/gpu_moves.h: demote_blocks).
  static std::vector<Status> copy_down_bytes(std::span<CopyDown* const> jobs);
  static Status copy_down_bytes(CopyDown& job);
  // Inserts the copy into the host tier unless it failed or was dropped meanwhile (then its
  // host extent goes back).
  Status publish_copy_down_locked(CopyDown& job, Status device_work) REQUIRES(mu_);
  void finish_copy_downs(std::vector<CopyDown>& jobs) EXCLUDES(mu_);
  // A remove or an admin eviction of the host tier: the copy down in flight is not published.
  void drop_copy_down_locked(const NsKey& id) REQUIRES(mu_);
  // reserve_put()'s locked half: registers the put unless its GPU reservation deferred copy
  // downs (then `put` holds the extent, and reserve_put() registers it after them).
  Result<uint64_t> reserve_put_locked(uint64_t sid, PendingPut& put,
                                      std::vector<CopyDown>& copy_downs) EXCLUDES(mu_);
  // A GPU tier that holds the block, or null.
  GpuTier* gpu_holder(const NsKey& id) const REQUIRES(mu_);
  HostTier& host_locked(uint32_t ns) const REQUIRES(mu_);  // host_of()
  // Records a lease of `b` in `tier` for the session.
  LeaseGrant grant(Session& s, MemoryTier& tier, const BlockInfo& b) REQUIRES(mu_);

  // KV events (engine/engine_events.cpp): one block became findable in, or left, a tier; an
  // admin eviction's blocks (evict_tracked collects them, report_evicted reports them, or
  // "cleared" when `everything` went).  No-ops without a sink.
  void event_stored(const NsKey& id, TierKind tier) REQUIRES(mu_);
  void event_removed(const NsKey& id, TierKind tier) REQUIRES(mu_);
  // The lookup index's entry of a block: its GPU and host bits from the memory tiers now,
  // leaving out `leaving` (a tier evicting the block, which still indexes it).
  void index_refresh_locked(const NsKey& id, const MemoryTier* leaving = nullptr) REQUIRES(mu_);
  // Sets or clears a block's disk bit (no lock of ours: the index has its own).  `domain`:
  // the namespace's isolation domain.
  void index_disk(uint32_t domain, const NsKey& id, bool on) const;
  // The disk tier's removals (a reclaimed region, a remove, an admin eviction): clears their
  // disk bits and reports them to the event sink.  Runs on any thread, mu_ held or not.
  void on_disk_removed(std::string_view ns, std::span<const BlockKey> keys);
  void install_disk_listener();
  // The done callback of a remote write: a stored event on REMOTE when it lands (null without
  // a sink).  Runs on the remote tier's worker, without mu_.
  std::function<void(Status)> remote_stored_event(const NsKey& id) REQUIRES(mu_);
  using EvictedKeys = std::vector<std::pair<TierKind, std::vector<NsKey>>>;
  Tier::EvictCount evict_tracked(MemoryTier& t, const std::function<bool(const NsKey&)>& match,
                                 EvictedKeys& gone) REQUIRES(mu_);
  void report_evicted(const EvictedKeys& gone, bool everything) REQUIRES(mu_);

  // Pins (engine_pins.cpp).  One per block; `block` is held in `tier` by one lease of the
  // pin's own (ArenaTier skips leased blocks when it evicts), released when the pin goes.
  struct Pin {
    MemoryTier* tier = nullptr;
    const BlockInfo* block = nullptr;
    uint64_t expires_unix_ms = 0;  // 0: no expiry
    int device = -1;               // >= 0: pinned in that GPU tier
  };
  // Drops a block's pin (its lease in the tier); false when it was not pinned.
  bool drop_pin_locked(const NsKey& id) REQUIRES(mu_);
  struct PinExpiry {
    uint32_t expired = 0;
    bool durable = false;  // a durable namespace's pin expired: the pin file is stale
  };
  PinExpiry expire_pins_locked(uint64_t now_unix_ms) REQUIRES(mu_);
  // pin()'s locked half: turns the request's leases (`grants`, all of this session) into pins
  // when every key can be pinned, then drops the leases.
  Result<PinResult> pin_leased(uint64_t sid, uint32_t ns, std::span<const LeaseGrant> grants,
                               uint64_t ttl_ms, Placement where);
  // Whether a namespace's pins are recorded in the pin file (disk = "persist").
  bool durable_pins_locked(uint32_t ns) const REQUIRES(mu_);
  // Rewrites the pin file with the durable namespaces' pins (a snapshot under mu_, written
  // without it; pins_file_mu_ orders the writers).  Logs a failure: pins still hold in memory.
  void save_pins() EXCLUDES(mu_, pins_file_mu_);

  // What the counters read under mu_ (one hold), visited after it is released.
  struct CounterSnapshot {
    std::vector<TierUsage> hosts;  // by domain
    std::vector<TierUsage> pools;  // in gpu_.tiers order
    uint64_t sessions = 0, leases = 0, pending_puts = 0, leased_bytes = 0;
    uint64_t pinned_blocks = 0, pinned_bytes = 0;
  };
  CounterSnapshot counter_snapshot() const;
  // The labels of a host arena or GPU pool of `domain`: arena="<name>" unless the default one.
  std::string_view domain_label(uint32_t domain) const;
  static void visit_session_counters(const CounterSnapshot& s, CounterVisitor& v);
  // Domain d's shared lookup index (engine_counters.cpp); nothing without one.
  void visit_lookup_index_counters(uint32_t d, CounterVisitor& v) const;

  // Constant after construction.
  const config::Config config_;
  Metrics& metrics_;
  // The lookup index per isolation domain (open_lookup_index(), before serving; then constant;
  // each index is thread-safe).  Declared before the stores so that it outlives their
  // callbacks.
  std::vector<std::unique_ptr<LookupIndex>> lookup_index_;
  std::unique_ptr<DaemonLiveness> liveness_;  // with lookup_index_, then constant
  // Namespace name -> (id, domain), for the disk tier's removal reports (which come by name,
  // sometimes with mu_ held): a leaf lock.
  mutable Mutex index_names_mu_;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> index_names_
      GUARDED_BY(index_names_mu_);
  const std::unique_ptr<DiskTier> disk_;  // thread-safe itself; may be null
  const std::string disk_status_;
  // The store tiers below the host tier, searched in this order (the disk tier; the remote
  // tier next).  Constant after construction; each is thread-safe itself.
  std::vector<StoreTier*> stores_;
  // The remote tier (thread-safe itself; may be null); in stores_ after the disk tier.
  const std::unique_ptr<RemoteTier> remote_;
  const std::unique_ptr<SemanticIndex> index_;  // thread-safe itself; may be null
  // Thread-safe themselves: atomics, and the sampler's own lock (never taken with mu_ held).
  CodecCounters codec_;
  Nf4ErrorSampler nf4_errors_;
  // Constant after construction until ~Engine tears it down before host_ (the backend has the
  // host arena registered); the GpuTiers in it are guarded by mu_.
  GpuSetup gpu_;

  // The vector is constant after construction; the tiers in it are guarded by mu_.
  const std::vector<std::unique_ptr<HostTier>> hosts_;
  // Per isolation domain: its GPU tiers (device order), then its host tier.  Constant after
  // construction; the tiers in it are guarded by mu_.
  std::vector<std::vector<MemoryTier*>> memory_ladder_;

  mutable Mutex mu_;
  std::vector<std::string> ns_names_ GUARDED_BY(mu_);  // ns id -> name
  std::vector<const config::NamespaceRule*> ns_rules_ GUARDED_BY(mu_);
  std::vector<uint32_t> ns_domains_ GUARDED_BY(mu_);  // ns id -> domain (index in hosts_)
  std::unordered_map<std::string, uint32_t> ns_ids_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Session> sessions_ GUARDED_BY(mu_);
  uint64_t next_session_ GUARDED_BY(mu_) = 1;
  std::unordered_map<NsKey, std::shared_ptr<Promotion>, NsKeyHash> promotions_ GUARDED_BY(mu_);
  // Where the GPU tiers' evict listener queues copy downs while reserve_gpu_locked() runs;
  // null: a victim is copied down at once (the listener's other callers).
  std::vector<CopyDown>* copy_down_queue_ GUARDED_BY(mu_) = nullptr;
  // The copy downs in flight, by block: the ticket of the newest.  drop_copy_down_locked()
  // erases the entry, and a copy whose ticket is not here is not published.
  std::unordered_map<NsKey, uint64_t, NsKeyHash> copying_down_ GUARDED_BY(mu_);
  uint64_t copy_down_tickets_ GUARDED_BY(mu_) = 0;
  std::function<void(std::span<const NsKey>)> copy_down_observer_;  // set before serving
  std::unordered_map<NsKey, Pin, NsKeyHash> pins_ GUARDED_BY(mu_);
  std::unordered_map<uint32_t, uint64_t> pinned_bytes_ GUARDED_BY(mu_);  // by namespace id
  uint64_t next_pin_expiry_ GUARDED_BY(mu_) = UINT64_MAX;  // the earliest expires_unix_ms
  // Taken before mu_ (never with it held): one pin file writer at a time, each writing the
  // pins as they are when it takes its snapshot, so the last writer leaves the newest state.
  Mutex pins_file_mu_;
  // Set once before serving (set_event_sink); null: no KV events.
  std::atomic<BlockEventSink*> events_{nullptr};

  // Async promotions in flight (docs/gpu.md, "Async gets").  Their GPU blocks are published
  // and leased at once; grants of them carry the pool's ready event until the batch's ticket
  // completes, and the host blocks the device reads stay held here until then.
  struct PendingPromotion {
    const GpuTier* tier = nullptr;
    uint64_t ticket = 0;
    uint32_t event = 0;
    std::vector<NsKey> ids;
    std::vector<Session::Held> host_holds;
  };
  std::vector<PendingPromotion> pending_promotions_ GUARDED_BY(mu_);
  std::unordered_map<NsKey, std::pair<const GpuTier*, uint32_t>, NsKeyHash> gpu_ready_events_
      GUARDED_BY(mu_);
  // Tickets that completed before their promotion was registered.
  std::vector<std::pair<const GpuTier*, uint64_t>> early_completions_ GUARDED_BY(mu_);
  // Completed tickets from the pools' event handlers (a backend thread, which must not wait
  // for mu_), applied by event_reaper_.  Shared with the handlers, which may outlive ~Engine's
  // stop of the reaper.
  struct EventQueue {
    Mutex mu;
    CondVar cv;
    std::vector<std::pair<const GpuTier*, uint64_t>> done GUARDED_BY(mu);
    bool stop GUARDED_BY(mu) = false;
    bool held GUARDED_BY(mu) = false;  // hold_completions()
  };
  std::shared_ptr<EventQueue> event_queue_ = std::make_shared<EventQueue>();
  std::thread event_reaper_;
  void reap_events();
  // A completed ticket: its promotion's blocks are ready and its host blocks released.
  void complete_promotion_locked(const GpuTier* tier, uint64_t ticket) REQUIRES(mu_);
  // Waits (without mu_) for the ready events of `grants` and clears them.
  void wait_ready(std::span<LeaseGrant> grants) EXCLUDES(mu_);
  void finish_pending_locked(PendingPromotion& p) REQUIRES(mu_);
};

}  // namespace kvtier
