// The remote tier over the Redis Cluster client (tiers/remote/redis_cluster.h).
#include "tiers/remote/remote_tier.h"

#include <boost/asio/post.hpp>

#include <cstring>
#include <nlohmann/json.hpp>

#include "tiers/disk/disk_format.h"

namespace kvtier {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t since_ns(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
}

void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.fetch_add(n, std::memory_order_relaxed);
}

uint64_t load(const std::atomic<uint64_t>& c) {
  return c.load(std::memory_order_relaxed);
}

bool is_ok_status(const redis::Reply& r) {
  return r.kind() == redis::Reply::Kind::kStatus && r.str() == "OK";
}

}  // namespace

// A value fetched by locate_async(), held until read() copies it out: the replies own the
// bytes (no copy out of hiredis's buffers).
struct RemoteTier::Fetched {
  remote::ValueHeader header;
  std::vector<redis::Reply> parts;
  size_t header_bytes = 0;  // where the payload starts in part 0
  // The stored payload's pieces, in order (views into `parts`).
  std::vector<std::string_view> pieces() const {
    std::vector<std::string_view> out;
    out.reserve(parts.size());
    for (size_t i = 0; i < parts.size(); ++i)
      out.push_back(parts[i].str().substr(i == 0 ? header_bytes : remote::kPartHeaderBytes));
    return out;
  }
};

RemoteTier::RemoteTier(Options options) : opt_(std::move(options)), pool_(opt_.threads) {
  // The first connection attempt off the caller's thread: the daemon starts at once.
  boost::asio::post(pool_, [this] { (void)cluster(); });
}

RemoteTier::~RemoteTier() {
  stop();
}

void RemoteTier::stop() {
  flush();
  stopped_ = true;
  pool_.join();
}

void RemoteTier::submit(std::function<void()> job, const std::function<void()>& refuse) {
  if (stopped_) {
    refuse();
    return;
  }
  boost::asio::post(pool_, std::move(job));
}

void RemoteTier::name_namespace(uint32_t id, std::string_view name, uint32_t ttl_s) {
  MutexLock lock(mu_);
  namespaces_[id] = NsInfo{std::string(name), ttl_s};
}

std::optional<std::string> RemoteTier::ns_name(uint32_t id) const {
  MutexLock lock(mu_);
  auto it = namespaces_.find(id);
  if (it == namespaces_.end()) return std::nullopt;
  return it->second.name;
}

uint32_t RemoteTier::ns_ttl(uint32_t id) const {
  MutexLock lock(mu_);
  auto it = namespaces_.find(id);
  return it == namespaces_.end() ? 0 : it->second.ttl_s;
}

bool RemoteTier::connected() const {
  MutexLock lock(mu_);
  return cluster_ != nullptr;
}

std::shared_ptr<redis::Cluster> RemoteTier::cluster() {
  {
    MutexLock lock(mu_);
    // An attempt under way (the first one starts with the daemon) is waited for: a request
    // that arrives while the tier connects gets the cluster's answer, not a spurious miss.
    // The attempt is bounded by the cluster's timeouts.
    while (connecting_) connect_done_.wait(lock);
    if (cluster_) return cluster_;
    if (Clock::now() < next_connect_) return nullptr;
    next_connect_ = Clock::now() + opt_.reconnect_interval;
    connecting_ = true;
  }
  auto c = redis::Cluster::connect(opt_.cluster);  // blocking, bounded by the timeouts
  MutexLock lock(mu_);
  connecting_ = false;
  connect_done_.notify_all();
  if (!c) {
    bump(n_.connect_failures);
    return nullptr;
  }
  bump(n_.connects);
  if (!cluster_) cluster_ = std::shared_ptr<redis::Cluster>(std::move(*c));
  return cluster_;
}

void RemoteTier::drop_bad(redis::Cluster& c, const std::string& key, const Status& why) {
  bump(n_.corrupt_dropped);
  const redis::Command unlink{{"UNLINK", key}, 1};
  (void)c.execute(std::span(&unlink, 1));
  (void)why;  // the counter is the report: a value is not logged per key on a hot path
}

std::shared_ptr<RemoteTier::Fetched> RemoteTier::fetch(const NsKey& id, const std::string& ns) {
  auto c = cluster();
  if (!c) {
    bump(n_.fetch_errors);
    return nullptr;
  }
  const std::string key0 = remote::value_key(opt_.key_prefix, ns, id.key);
  const redis::Command get0{{"GET", key0}, 1};
  auto r0 = c->execute(std::span(&get0, 1));
  if (!r0.front()) {
    bump(n_.fetch_errors);
    return nullptr;
  }
  if (r0.front()->is_nil()) return nullptr;
  if (r0.front()->kind() != redis::Reply::Kind::kString) {
    bump(n_.fetch_errors);
    return nullptr;
  }
  auto f = std::make_shared<Fetched>();
  f->parts.push_back(std::move(*r0.front()));
  auto header = remote::decode_header(f->parts[0].str(), f->header);
  if (!header) {
    drop_bad(*c, key0, header.status());
    return nullptr;
  }
  f->header_bytes = *header;
  if (f->header.ns != ns || f->header.key != id.key) {
    drop_bad(*c, key0, error(Errc::kCorrupt, "a value of another block"));
    return nullptr;
  }
  if (f->header.parts > 1) {
    std::vector<std::string> keys;
    std::vector<redis::Command> gets;
    keys.reserve(f->header.parts - 1);
    for (uint32_t p = 1; p < f->header.parts; ++p)
      keys.push_back(remote::value_key(opt_.key_prefix, ns, id.key, p));
    for (const std::string& k : keys) gets.push_back({{"GET", k}, 1});
    auto rs = c->execute(gets);
    for (uint32_t p = 1; p < f->header.parts; ++p) {
      auto& r = rs[p - 1];
      if (!r) {
        bump(n_.fetch_errors);
        return nullptr;
      }
      Status part = r->kind() == redis::Reply::Kind::kString
                        ? remote::check_part_header(r->str(), p, f->header.payload_checksum)
                        : error(Errc::kCorrupt, "part missing");
      if (!part) {  // evicted by Redis on its own, or a part of another copy: the block is gone
        drop_bad(*c, key0, part);
        return nullptr;
      }
      f->parts.push_back(std::move(*r));
    }
  }
  // The payload's bytes are verified where they land: read() checks every tensor's checksum
  // after the copy (or decompression), which covers every byte served; the payload checksum
  // binds the parts to this copy (their headers) and names the version.
  uint64_t stored = 0;
  for (std::string_view piece : f->pieces()) stored += piece.size();
  if (stored != f->header.stored_bytes) {
    drop_bad(*c, key0, error(Errc::kCorrupt, "payload size"));
    return nullptr;
  }
  return f;
}

void RemoteTier::probe(uint32_t ns, std::span<const BlockKey> keys,
                       std::function<void(std::vector<uint8_t> found)> done) {
  auto name = ns_name(ns);
  if (!name || keys.empty()) {
    done(std::vector<uint8_t>(keys.size(), 0));
    return;
  }
  std::vector<BlockKey> ks(keys.begin(), keys.end());
  auto shared_done = std::make_shared<std::function<void(std::vector<uint8_t>)>>(std::move(done));
  const size_t n = keys.size();
  submit(
      [this, name = std::move(*name), ks = std::move(ks), shared_done]() mutable {
        auto& done = *shared_done;
        const auto t0 = Clock::now();
        std::vector<uint8_t> found(ks.size(), 0);
        bump(n_.probes);
        bump(n_.probe_keys, ks.size());
        if (auto c = cluster()) {
          std::vector<std::string> names;
          names.reserve(ks.size());
          for (const BlockKey& k : ks) names.push_back(remote::value_key(opt_.key_prefix, name, k));
          std::vector<redis::Command> cmds;
          cmds.reserve(ks.size());
          for (const std::string& n : names) cmds.push_back({{"EXISTS", n}, 1});
          auto rs = c->execute(cmds);
          for (size_t i = 0; i < rs.size(); ++i) {
            if (!rs[i] || rs[i]->kind() != redis::Reply::Kind::kInteger) {
              bump(n_.probe_errors);
              continue;
            }
            found[i] = rs[i]->integer() > 0 ? 1 : 0;
            bump(n_.probe_hits, found[i]);
          }
        } else {
          bump(n_.probe_errors);
        }
        probe_latency_.observe_ns(since_ns(t0));
        done(std::move(found));
      },
      [&] { (*shared_done)(std::vector<uint8_t>(n, 0)); });
}

void RemoteTier::locate_async(const NsKey& id,
                              std::function<void(std::optional<StoredBlock>)> done) {
  auto name = ns_name(id.ns);
  if (!name) {
    done(std::nullopt);
    return;
  }
  auto shared_done =
      std::make_shared<std::function<void(std::optional<StoredBlock>)>>(std::move(done));
  submit(
      [this, id, name = std::move(*name), shared_done] {
        auto& done = *shared_done;
        const auto t0 = Clock::now();
        bump(n_.fetches);
        auto f = fetch(id, name);
        fetch_latency_.observe_ns(since_ns(t0));
        if (!f) {
          bump(n_.misses);
          done(std::nullopt);
          return;
        }
        bump(n_.hits);
        StoredBlock b{id, f->header.layout, f->header.layout.total_bytes,
                      f->header.payload_checksum};
        {
          MutexLock lock(mu_);
          // Bounded: a fetch whose read() never comes (its promotion found no host space) is
          // pushed out by later ones.
          if (auto it = fetched_.find(id); it != fetched_.end()) {
            fetched_bytes_ -= it->second->header.stored_bytes;
            fetched_.erase(it);
          }
          while (!fetched_.empty() &&
                 fetched_bytes_ + f->header.stored_bytes > opt_.fetch_cache_bytes) {
            fetched_bytes_ -= fetched_.begin()->second->header.stored_bytes;
            fetched_.erase(fetched_.begin());
          }
          fetched_bytes_ += f->header.stored_bytes;
          fetched_.emplace(id, std::move(f));
        }
        done(std::move(b));
      },
      [&] { (*shared_done)(std::nullopt); });
}

void RemoteTier::read(const StoredBlock& block, std::span<std::byte> dst,
                      std::function<void(Status)> done) {
  if (dst.size() < block.payload_bytes) {
    done(error(Errc::kInvalidArgument, "destination smaller than the block"));
    return;
  }
  auto shared_done = std::make_shared<std::function<void(Status)>>(std::move(done));
  submit(
      [this, block, dst, shared_done] {
        auto& done = *shared_done;
        std::shared_ptr<Fetched> f;
        {
          MutexLock lock(mu_);
          if (auto it = fetched_.find(block.id); it != fetched_.end()) {
            f = std::move(it->second);
            fetched_bytes_ -= f->header.stored_bytes;
            fetched_.erase(it);
          }
        }
        if (!f) {
          auto name = ns_name(block.id.ns);
          if (name) f = fetch(block.id, *name);
        }
        if (!f || f->header.payload_checksum != block.version) {
          done(error(Errc::kNotFound, "the remote copy is gone or changed"));
          return;
        }
        const BlockLayout& layout = f->header.layout;
        std::span<std::byte> out = dst.first(layout.total_bytes);
        const std::vector<std::string_view> pieces = f->pieces();
        Status st;
        if (f->header.compression == remote::Compression::kNone) {
          size_t at = 0;
          for (std::string_view p : pieces) {
            std::memcpy(out.data() + at, p.data(), p.size());
            at += p.size();
          }
        } else if (pieces.size() == 1) {
          st =
              decompress_planes2(std::as_bytes(std::span(pieces[0].data(), pieces[0].size())), out);
        } else {
          std::vector<std::byte> joined;
          joined.reserve(f->header.stored_bytes);
          for (std::string_view p : pieces) {
            auto b = std::as_bytes(std::span(p.data(), p.size()));
            joined.insert(joined.end(), b.begin(), b.end());
          }
          st = decompress_planes2(joined, out);
        }
        if (st) st = remote::verify_tensors(layout, out);
        if (!st) {
          if (auto c = cluster()) {
            auto name = ns_name(block.id.ns);
            if (name) drop_bad(*c, remote::value_key(opt_.key_prefix, *name, block.id.key), st);
          }
          done(error(Errc::kCorrupt, st.message()));
          return;
        }
        bump(n_.read_bytes, layout.total_bytes);
        done({});
      },
      [&] { (*shared_done)(error(Errc::kUnavailable, "remote tier stopped")); });
}

Status RemoteTier::write(const NsKey& id, const BlockLayout& layout,
                         std::span<const std::byte> payload, bool compress,
                         std::function<void(Status)> done) {
  auto name = ns_name(id.ns);
  if (!name) return error(Errc::kInvalidArgument, "namespace unknown to the remote tier");
  if (stopped_) return error(Errc::kUnavailable, "remote tier stopped");
  if (queued_bytes_.load() + payload.size() > opt_.queue_bytes) {
    bump(n_.writes_dropped);
    return error(Errc::kLimit, "remote write queue full");
  }
  {
    MutexLock lock(mu_);
    if (!writing_.insert(id).second)
      return error(Errc::kAlreadyExists, "being written to the remote tier");
    ++in_flight_;
  }
  queued_bytes_ += payload.size();
  auto bytes = std::make_shared<std::vector<std::byte>>(payload.begin(), payload.end());
  boost::asio::post(
      pool_, [this, id, layout, name = std::move(*name), bytes, compress, done = std::move(done)] {
        const auto t0 = Clock::now();
        Status st = store(id, name, layout, *bytes, compress);
        write_latency_.observe_ns(since_ns(t0));
        queued_bytes_ -= bytes->size();
        if (done) done(st);
        MutexLock lock(mu_);
        writing_.erase(id);
        if (--in_flight_ == 0) idle_.notify_all();
      });
  return {};
}

Status RemoteTier::store(const NsKey& id, const std::string& ns, const BlockLayout& layout,
                         std::span<const std::byte> payload, bool compress) {
  auto c = cluster();
  if (!c) {
    bump(n_.write_errors);
    return error(Errc::kUnavailable, "remote tier: cluster unreachable");
  }
  const std::string key0 = remote::value_key(opt_.key_prefix, ns, id.key);
  // Another host (or this one, earlier) stored it: blocks are immutable, a copy is as good.
  const redis::Command exists{{"EXISTS", key0}, 1};
  auto e = c->execute(std::span(&exists, 1));
  if (e.front() && e.front()->kind() == redis::Reply::Kind::kInteger && e.front()->integer() > 0) {
    bump(n_.writes_skipped);
    return {};
  }
  remote::ValueHeader h;
  h.ns = ns;
  h.key = id.key;
  h.layout = layout;
  h.created_unix_ms = now_unix_ms();
  std::vector<std::byte> packed;
  std::span<const std::byte> stored = payload;
  if (compress && compressible(layout, payload.size()) && compress_planes2(payload, packed)) {
    h.compression = remote::Compression::kZstdPlanes2;
    stored = packed;
  }
  h.stored_bytes = stored.size();
  h.payload_checksum = checksum64(stored.data(), stored.size());
  // Part 0 holds the header and as much payload as fits; parts 1..n the rest.
  std::string header = remote::encode_header(h);
  const uint64_t first = std::min<uint64_t>(
      stored.size(),
      opt_.max_value_bytes > header.size() ? opt_.max_value_bytes - header.size() : 0);
  const uint64_t per_part = opt_.max_value_bytes - remote::kPartHeaderBytes;
  const uint64_t rest = stored.size() - first;
  h.parts = 1 + static_cast<uint32_t>((rest + per_part - 1) / per_part);
  if (h.parts > remote::kMaxParts) {
    bump(n_.write_errors);
    return error(Errc::kInvalidArgument, "block too large for remote.max_value_bytes");
  }
  header = remote::encode_header(h);  // with the part count
  std::vector<std::string> values(h.parts), keys(h.parts);
  values[0] = header;
  values[0].append(reinterpret_cast<const char*>(stored.data()), first);
  uint64_t at = first;
  for (uint32_t p = 1; p < h.parts; ++p) {
    const uint64_t n = std::min(per_part, stored.size() - at);
    values[p] = remote::encode_part_header(p, h.payload_checksum);
    values[p].append(reinterpret_cast<const char*>(stored.data()) + at, n);
    at += n;
  }
  for (uint32_t p = 0; p < h.parts; ++p)
    keys[p] = remote::value_key(opt_.key_prefix, ns, id.key, p);
  const uint32_t ttl = ns_ttl(id.ns);
  const std::string ttl_text = std::to_string(ttl);
  // The parts first, part 0 (the header) last: a reader that finds the header finds the parts.
  // One slot, one node: the whole block is one pipeline.
  std::vector<redis::Command> sets;
  for (uint32_t i = 0; i < h.parts; ++i) {
    const uint32_t p = (i + 1) % h.parts;  // 1, 2, ..., n-1, 0
    redis::Command cmd{{"SET", keys[p], values[p]}, 1};
    if (ttl > 0) {
      cmd.argv.push_back("EX");
      cmd.argv.push_back(ttl_text);
    }
    sets.push_back(std::move(cmd));
  }
  auto rs = c->execute(sets);
  for (auto& r : rs)
    if (!r || !is_ok_status(*r)) {
      bump(n_.write_errors);
      return r ? error(Errc::kIo, "remote tier: SET: " + std::string(r->str()))
               : error(r.status().code(), "remote tier: " + r.status().message());
    }
  bump(n_.writes);
  bump(n_.write_bytes, payload.size());
  return {};
}

RemoveOutcome RemoteTier::remove(const NsKey& id) {
  auto name = ns_name(id.ns);
  if (!name) return RemoveOutcome::kNotFound;
  if (!stopped_)
    boost::asio::post(pool_,
                      [this, name = std::move(*name), key = id.key] { remove_now(name, key); });
  return RemoveOutcome::kNotFound;  // asynchronous: the engine counts what the local tiers held
}

void RemoteTier::remove_now(const std::string& ns, const BlockKey& key) {
  auto c = cluster();
  if (!c) {
    bump(n_.remove_errors);
    return;
  }
  const std::string key0 = remote::value_key(opt_.key_prefix, ns, key);
  // The header (at most 64 KiB: its size is a u16) says how many parts to delete.
  const redis::Command head{{"GETRANGE", key0, "0", "65535"}, 1};
  auto r = c->execute(std::span(&head, 1));
  uint32_t parts = 1;
  remote::ValueHeader h;
  if (r.front() && r.front()->kind() == redis::Reply::Kind::kString &&
      remote::decode_header(r.front()->str(), h))
    parts = h.parts;
  std::vector<std::string> keys;
  for (uint32_t p = 0; p < parts; ++p)
    keys.push_back(remote::value_key(opt_.key_prefix, ns, key, p));
  std::vector<redis::Command> unlinks;
  for (const std::string& k : keys) unlinks.push_back({{"UNLINK", k}, 1});
  for (auto& u : c->execute(unlinks))
    if (!u) {
      bump(n_.remove_errors);
      return;
    }
  bump(n_.removes);
}

void RemoteTier::flush() {
  MutexLock lock(mu_);
  while (in_flight_ > 0) idle_.wait(lock);
}

TierUsage RemoteTier::usage() const {
  TierUsage u;
  u.raw_bytes = load(n_.write_bytes);
  return u;
}

}  // namespace kvtier
