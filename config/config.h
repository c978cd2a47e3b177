// kvtierd's configuration as validated structs.  config/kvtier.toml documents every key with
// its default; docs/operations.md lists them too.  Parsing errors and validation failures are
// reported as ConfigError (the only place kvtier uses exceptions besides construction).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/types.h"

namespace kvtier::config {

// "unknown key 'host.sise' at line 12 of /etc/kvtier/kvtier.toml", "host.size: bad size '12QB'"
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DaemonConfig {
  // Unix socket path. Default: $RUNTIME_DIRECTORY/kvtier.sock under systemd, else ./var/kvtier.sock
  std::filesystem::path socket;
  // State directory. Default: $STATE_DIRECTORY under systemd, else ./var/lib
  std::filesystem::path state_dir;
  // Name prefix of the daemon's shared-memory objects in /dev/shm ("kvtier" ->
  // /dev/shm/kvtier-host-0).
  std::string shm_prefix = "kvtier";
  uint32_t io_threads = 2;                  // threads running the Asio io_context, 1..64
  uint64_t max_message_bytes = 4ull << 20;  // largest accepted request frame
  uint32_t busy_poll_us = 0;  // io threads poll this long after their last handler, 0..100000
  // Polling clients may open a shared-memory request channel (needs busy_poll_us > 0).
  bool request_channel = true;
  // Publish a read-only lookup index per isolation domain in shared memory, from which
  // clients answer lookups without a round trip (docs/protocol.md, "Lookup index").
  bool lookup_index = true;
  uint64_t lookup_index_slots = 1ull << 16;      // initial entries (32 bytes each), power of 2
  uint64_t lookup_index_max_slots = 1ull << 22;  // it grows to this many, power of 2
  uint32_t max_connections = 1024;
  uint32_t drain_timeout_ms = 5000;  // SIGTERM: time given to in-flight requests
  std::string log_level = "info";    // trace|debug|info|warn|error
  void validate() const;
};

struct AccessConfig {
  std::string socket_mode = "0660";  // octal permission bits of the socket file
  std::string socket_group;          // group owning the socket; empty = daemon's primary group
  // Admin requests (evict, clients, config) need a peer uid or gid listed here.
  // Default when absent from the file: uid 0 and the daemon's own uid.
  std::vector<uid_t> admin_uids;
  std::vector<gid_t> admin_gids;
  void validate() const;
};

struct HostTierConfig {
  uint64_t size_bytes = 1ull << 30;  // bytes of shared memory for blocks
  bool prefault = true;              // touch every page at start (no faults on puts)
  double small_queue_ratio = 0.10;   // S3-FIFO small-queue share of size_bytes, (0, 0.5]
  uint64_t ghost_entries = 0;        // S3-FIFO ghost queue length; 0 = derived from size
  // Checks size_bytes, plus `arena_bytes` of the isolation domains' arenas, against the free
  // space of shm_dir (/dev/shm): a host tier that cannot fit is refused with the sizes in the
  // message.
  void validate(const std::filesystem::path& shm_dir = "/dev/shm", uint64_t arena_bytes = 0) const;
};

// Settings that are a choice among names are enums from parse time on; an unknown name is a
// ConfigError naming the key and the names allowed.  to_string() gives the name back.
enum class DiskIoBackend : uint8_t { kAuto, kIoUring, kThreads };    // disk.io_backend
enum class GpuBackend : uint8_t { kAuto, kCuda, kEmulation, kOff };  // gpu.backend
enum class GpuHandle : uint8_t { kVmm, kIpc };                       // gpu.handle
const char* to_string(DiskIoBackend v);
const char* to_string(GpuBackend v);
const char* to_string(GpuHandle v);

// The disk tier: region files and an LMDB index under `dir` (docs/disk.md).
struct DiskTierConfig {
  bool enabled = true;
  std::filesystem::path dir;                        // empty = <daemon.state_dir>/disk
  uint64_t size_bytes = 16ull << 30;                // region bytes on disk
  uint64_t region_bytes = 64ull << 20;              // size of one region file
  uint64_t write_queue_bytes = 256ull << 20;        // demotions queued for writing; beyond: dropped
  DiskIoBackend io_backend = DiskIoBackend::kAuto;  // auto | io_uring | threads
  bool o_direct = true;                             // falls back to buffered I/O where refused
  uint32_t threads = 2;                             // thread-pool I/O and compression workers
  uint32_t reader_check_s = 60;                     // mdb_reader_check period
  void validate() const;
};

// The semantic index (FAISS) over embedding entries of cached chunks (docs/index.md).
struct IndexConfig {
  bool enabled = true;
  uint64_t exact_max_vectors = 10000;  // exact search up to this many vectors per modality
  uint32_t nprobe = 0;                 // IVF lists probed; 0 = chosen from nlist
  uint32_t save_interval_s = 30;       // persist changed indices this often (and at exit)
  void validate() const;
};

// The hot tier: fp16 blocks in GPU memory handed to clients by CUDA IPC (docs/gpu.md).
struct GpuTierConfig {
  // "auto": CUDA when the probe finds a usable device, else no GPU tier (logged);
  // "cuda": the same, but the log and health say the GPU tier was asked for and is missing;
  // "emulation": the host-memory emulation (tests, machines without a GPU); "off".
  GpuBackend backend = GpuBackend::kAuto;
  std::vector<uint32_t> devices;       // device indices; empty = every device found (emulation: 0)
  uint64_t size_bytes = 1ull << 30;    // pool bytes per device
  GpuHandle handle = GpuHandle::kVmm;  // cuda export: "vmm" (VMM POSIX fd) or "ipc" (cudaIpc)
  double small_queue_ratio = 0.10;     // S3-FIFO small-queue share, (0, 0.5]
  void validate() const;
};

// What happens to a namespace's blocks on the disk tier.
enum class DiskPolicy : uint8_t {
  kOff = 0,        // never written to disk
  kWriteBack = 1,  // written when the host tier evicts them (default)
  kPersist = 2,    // written at seal too; seal answers once the block is durable
};

// GET /metrics (Prometheus text exposition) and the optional quality figures
// (docs/operations.md, "Metrics").
struct MetricsConfig {
  // "address:port" to serve GET /metrics on over HTTP ("127.0.0.1:9464", "[::1]:9464");
  // empty (the default) = no endpoint.  The address is an IP literal.
  std::string listen;
  // Share of NF4 seals whose quantization error is measured (decode and compare with the
  // staged source), in [0, 1]; 0 (the default) = never.
  double nf4_error_sample = 0.0;
  void validate() const;
};

// The remote tier: a Redis Cluster shared by every host's kvtierd (docs/remote.md).
struct RemoteTierConfig {
  // "host:port" of any nodes of the cluster; empty (the default) = no remote tier.
  std::vector<std::string> seeds;
  std::string password;                // AUTH, when the cluster asks for one
  uint32_t connect_timeout_ms = 500;   // per connection attempt
  uint32_t command_timeout_ms = 2000;  // per pipelined batch on one node
  uint32_t threads = 4;                // the tier's workers (each runs one batch at a time)
  uint32_t connections_per_node = 4;
  uint64_t max_value_bytes = 8ull << 20;  // larger blocks are stored as several parts
  uint64_t queue_bytes = 256ull << 20;    // writes queued and not yet stored (over: dropped)
  uint32_t lookup_timeout_ms = 50;        // a lookup's remote step gives up (a miss) after this
  // The key prefix of every value in the cluster: several kvtier deployments can share one
  // cluster under different prefixes.
  std::string key_prefix = "kvtier";
  bool enabled() const { return !seeds.empty(); }
  void validate() const;
};

// KV events (docs/remote.md, "KV events"): blocks stored, removed and cleared, published in the
// format of vLLM's KV events (msgpack KVEventBatch over ZeroMQ PUB).
struct EventsConfig {
  std::string endpoint;              // ZeroMQ PUB endpoint ("tcp://127.0.0.1:5557"); "" = off
  std::string replay_endpoint;       // ZeroMQ ROUTER endpoint for replays; "" = no replay
  uint64_t buffer_batches = 10000;   // batches kept for replay
  uint32_t max_batch_events = 1024;  // events per batch (a batch leaves at most every batch_ms)
  uint32_t batch_ms = 10;
  void validate() const;
};

// What a namespace's blocks do on the remote tier.
enum class RemotePolicy : uint8_t {
  kOff = 0,           // never (default)
  kWriteBack = 1,     // what the host tier evicts (after the disk tier's write-back, if any)
  kWriteThrough = 2,  // every sealed block, as soon as it is sealed
};

// An "address:port" of MetricsConfig::listen, split.
struct ListenAddress {
  std::string address;  // an IPv4 or IPv6 literal (without brackets)
  uint16_t port = 0;
};
// nullopt unless `text` is "ipv4:port" or "[ipv6]:port" with a port in 1..65535.
std::optional<ListenAddress> parse_listen(std::string_view text);

struct SessionConfig {
  uint64_t staging_bytes = 64ull << 20;  // per-connection staging area (largest single put)
  // Per connection and device, in GPU memory, made when the client first puts from device
  // memory (docs/gpu.md, "Device puts"); the largest device put.
  uint64_t device_staging_bytes = 64ull << 20;
  uint32_t max_leases = 65536;      // per connection
  uint32_t max_pending_puts = 256;  // per connection, begun but not sealed
  void validate() const;
};

// Access and storage rules for the namespaces whose name starts with `prefix`.
// A request's namespace is matched against the longest configured prefix; "" matches all.
// An isolation domain (docs/operations.md, "Isolation domains"): a host arena of its own,
// sized and evicted within its own budget, mapped only by peers that some namespace rule of
// the domain allows.  The default domain ("", namespaces without `arena`) is the [host] arena.
struct ArenaConfig {
  std::string name;         // 1..32 characters of [A-Za-z0-9_.-]
  uint64_t size_bytes = 0;  // the domain's host arena in /dev/shm
  // Its own pool on each GPU tier device; 0: its blocks stay in host memory (a GPU get of them
  // is answered with host leases).  The shared pools (gpu.size) hold the default domain only.
  uint64_t gpu_size_bytes = 0;
  void validate() const;
};

struct NamespaceRule {
  std::string prefix;
  // The isolation domain ([[arena]] name) whose arena holds these namespaces' blocks; "" is
  // the default arena shared by every namespace without one.
  std::string arena;
  std::vector<uid_t> allow_uids;  // empty uid and gid lists = any connected peer
  std::vector<gid_t> allow_gids;
  Codec codec = Codec::kNf4;  // cold-tier format: "nf4" (default) or "fp16" (raw, lossless)
  // NF4 options (docs/nf4.md).  Double quant stores each 64-value block's scale in 7 bits:
  // 4.11 instead of 4.5 bits per value.  Outlier channels: the N columns (channels) of largest
  // magnitude of each key tensor ("k", "k.*", last path component) are stored exactly, at
  // rows x 2 bytes each; at most cols / 16 per tensor.  Both apply to whatever this rule
  // stores as NF4 (codec, fusion_codec); set explicitly with neither being "nf4", they are
  // config errors.
  bool nf4_double_quant = true;
  uint32_t nf4_outlier_channels = 0;  // 0..kMaxNf4OutlierChannels
  static constexpr uint32_t kMaxNf4OutlierChannels = 64;
  Codec fusion_codec = Codec::kRaw;          // fusion tensors: "fp16" (lossless, default) or "nf4"
  DiskPolicy disk = DiskPolicy::kWriteBack;  // "off" | "writeback" | "persist"
  bool compress = true;                      // zstd on the disk tier where it pays
  RemotePolicy remote = RemotePolicy::kOff;  // "off" | "writeback" | "writethrough"
  uint32_t remote_ttl_s = 0;                 // expiry of its remote values; 0 = none
  // Pins (docs/operations.md, "Pins"): the most stored bytes each namespace of this rule may
  // keep pinned, per tier it pins in.  kPinBytesAuto: a quarter of the rule's host arena
  // (Config::pin_quota); 0: pins are refused.
  static constexpr uint64_t kPinBytesAuto = UINT64_MAX;
  uint64_t pin_bytes = kPinBytesAuto;
  void validate() const;
  bool allows(uid_t uid, gid_t gid, const std::vector<gid_t>& groups) const;
};

struct Config {
  DaemonConfig daemon;
  AccessConfig access;
  HostTierConfig host;
  DiskTierConfig disk;
  GpuTierConfig gpu;
  IndexConfig index;
  SessionConfig session;
  MetricsConfig metrics;
  RemoteTierConfig remote;
  EventsConfig events;
  std::vector<NamespaceRule> namespaces;  // default: one rule, prefix "", any peer
  std::vector<ArenaConfig> arenas;        // isolation domains besides the default one

  void validate() const;
  // disk.dir, or <daemon.state_dir>/disk when it is empty.
  std::filesystem::path disk_dir() const;
  // The rule for a namespace, or nullptr when none matches (requests are then refused).
  const NamespaceRule* rule_for(std::string_view ns) const;
  // The domain index of an arena name: 0 for "" (the default), i + 1 for arenas[i]; -1 when
  // no such arena is configured.
  int domain_of(std::string_view arena) const;
  // The host arena bytes of a rule's isolation domain (host.size or its [[arena]] size).
  uint64_t arena_bytes_of(const NamespaceRule& rule) const;
  // A namespace's pin quota in bytes: rule.pin_bytes, or a quarter of its arena when "auto".
  uint64_t pin_quota(const NamespaceRule& rule) const;
  // The effective settings as TOML (`kvtierctl config`).
  std::string to_toml() const;
};

// Built-in defaults (no file), with paths resolved from the environment as described above.
Config defaults();
// Parses a TOML document; `origin` names it in error messages.  Unknown keys, wrong types,
// bad sizes ("1GiB", "512MiB", "4096" bytes) and failed validation throw ConfigError.
Config parse(std::string_view toml_text, const std::string& origin = "<string>");
Config load(const std::filesystem::path& file);

// "64MiB" -> 67108864; accepts B, KiB, MiB, GiB, TiB (and KB/MB/GB as powers of 1000).
std::optional<uint64_t> parse_size(std::string_view text);

}  // namespace kvtier::config
