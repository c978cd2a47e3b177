// DiskTier: open, the public calls, the read path and the worker pool.  The write pipeline is
// in disk_writer.cpp, recovery and admin in disk_admin.cpp.
#include <cstring>
#include <future>

#include "tiers/disk/disk_tier_impl.h"

namespace kvtier {

DiskTier::DiskTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DiskTier::~DiskTier() {
  impl_->stop();
}

Result<std::unique_ptr<DiskTier>> DiskTier::open(const DiskOptions& options,
                                                 std::unique_ptr<Device> device) {
  if (options.dir.empty()) return error(Errc::kInvalidArgument, "disk tier: no dir");
  if (options.region_bytes < 2 * kRegionHeaderBytes || options.region_bytes % kDiskAlign)
    return error(Errc::kInvalidArgument, "disk tier: region_bytes must be >= 8 KiB, 4 KiB aligned");
  auto impl = std::make_unique<Impl>();
  impl->opt = options;
  impl->max_regions = std::max<uint64_t>(2, options.capacity_bytes / options.region_bytes);
  auto index = DiskIndex::open(options.dir / "index", options.index_map_bytes, options.durable);
  if (!index) return index.status();
  impl->index = std::move(index.value());
  if (!device) {
    FileDeviceOptions fo{options.dir, options.o_direct, options.threads, 128,
                         options.refuse_io_uring};
    std::string why;
    if (options.backend != DiskOptions::Backend::kThreads) {
      auto u = make_uring_device(fo);
      if (u)
        device = std::move(u.value());
      else
        why = u.status().message();
    }
    if (!device) {
      auto t = make_thread_device(fo, why);
      if (!t) return t.status();
      device = std::move(t.value());
    }
  }
  impl->dev = std::move(device);
  if (Status s = impl->recover(); !s) return s;
  impl->start();
  return std::unique_ptr<DiskTier>(new DiskTier(std::move(impl)));
}

std::string DiskTier::backend() const {
  return impl_->dev->describe();
}

void DiskTier::Impl::start() {
  writer_ = std::thread([this] { writer_loop(); });
  committer_ = std::thread([this] { committer_loop(); });
  for (uint32_t i = 0; i < std::max(1u, opt.threads); ++i)
    workers_.emplace_back([this] { worker_loop(); });
}

void DiskTier::Impl::stop() {
  {
    MutexLock lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  writer_.join();  // drains the queue first
  committer_.join();
  {
    MutexLock lock(mu_);
    cv_.wait(lock, [&] {
      mu_.assert_held();  // the wait holds it when it asks
      return inflight_reads_ == 0;
    });
  }
  {
    MutexLock lock(mu_);
    cv_.notify_all();
  }
  for (auto& t : workers_) t.join();
  std::unordered_map<std::string, uint64_t> touched;
  {
    MutexLock lock(mu_);
    touched.swap(touched_);
  }
  if (!touched.empty()) {
    if (auto txn = index->begin_write()) {
      for (auto& [k, ms] : touched)
        if (auto v = txn->get_block(k)) {
          patch_last_access(*v, ms);
          (void)txn->put_block(k, *v, false);
        }
      (void)txn->commit();
    }
  }
  dev.reset();
  index.reset();
}

void DiskTier::Impl::post(std::function<void()> fn) {
  MutexLock lock(mu_);
  work_.push_back(std::move(fn));
  cv_.notify_all();
}

void DiskTier::Impl::worker_loop() {
  for (;;) {
    std::function<void()> fn;
    {
      MutexLock lock(mu_);
      cv_.wait(lock, [&] {
        mu_.assert_held();  // the wait holds it when it asks
        return !work_.empty() || (stop_ && inflight_reads_ == 0);
      });
      if (work_.empty()) return;
      fn = std::move(work_.front());
      work_.pop_front();
    }
    fn();
  }
}

Status DiskTier::write(std::string_view ns, const BlockKey& key, const BlockLayout& layout,
                       std::span<const std::byte> payload, bool compress,
                       std::function<void(Status)> done) {
  Impl& m = *impl_;
  if (ns.size() > kMaxDiskNamespaceBytes)
    return error(Errc::kInvalidArgument, "disk tier: namespace longer than 255 bytes");
  if (payload.size() != layout.total_bytes || payload.empty())
    return error(Errc::kInvalidArgument, "disk tier: payload size != layout.total_bytes");
  if (align_up(payload.size(), kDiskAlign) + kRegionHeaderBytes > m.opt.region_bytes)
    return error(Errc::kInvalidArgument, "disk tier: block larger than a region");
  std::string bkey = encode_block_key(ns, key);
  if (m.index->get_block(bkey)) return error(Errc::kAlreadyExists, "disk tier: key on disk");
  {
    MutexLock lock(m.mu_);
    if (m.stop_) return error(Errc::kUnavailable, "disk tier: closing");
    if (m.pending_.count(bkey)) return error(Errc::kAlreadyExists, "disk tier: key queued");
    if (m.queued_bytes_ > 0 && m.queued_bytes_ + payload.size() > m.opt.write_queue_bytes)
      return error(Errc::kLimit, "disk tier: write queue full");
    m.queued_bytes_ += payload.size();  // reserved now, copied below without the lock
    m.pending_.insert(bkey);
  }
  auto job = std::make_unique<Impl::Job>();
  job->ns = std::string(ns);
  job->bkey = std::move(bkey);
  job->key = key;
  job->layout = layout;
  job->payload = m.take_buffer(payload.size());
  std::memcpy(job->payload.data(), payload.data(), payload.size());
  std::memset(job->payload.data() + payload.size(), 0, job->payload.size() - payload.size());
  job->payload_bytes = payload.size();
  job->compress = compress;
  job->done = std::move(done);
  m.enqueue(std::move(job));
  return {};
}

bool DiskTier::writing(const NsKey& id) const {
  auto name = name_of(id.ns);
  if (!name) return false;
  const std::string bkey = encode_block_key(*name, id.key);
  MutexLock lock(impl_->mu_);
  return impl_->pending_.count(bkey) > 0;
}

AlignedBuffer DiskTier::Impl::take_buffer(size_t bytes) {
  const size_t want = align_up(std::max<size_t>(bytes, 1), kDiskAlign);
  {
    MutexLock lock(mu_);
    for (auto it = pool_.begin(); it != pool_.end(); ++it)
      if (it->size() == want) {
        AlignedBuffer b = std::move(*it);
        pool_.erase(it);
        pool_bytes_ -= want;
        return b;
      }
  }
  return AlignedBuffer(want);
}

void DiskTier::Impl::give_buffer(AlignedBuffer b) {
  if (b.size() < (1u << 20) || pool_bytes_ + b.size() > pool_cap()) return;  // freed
  pool_bytes_ += b.size();
  pool_.push_back(std::move(b));
}

void DiskTier::Impl::enqueue(std::unique_ptr<Job> job) {
  MutexLock lock(mu_);
  queue_.push_back(std::move(job));
  ++unfinished_;
  cv_.notify_all();
}

std::optional<DiskEntry> DiskTier::find(std::string_view ns, const BlockKey& key) const {
  std::string bkey = encode_block_key(ns, key);
  auto v = impl_->index->get_block(bkey);
  if (!v) return std::nullopt;
  DiskEntry e;
  if (!decode_entry(bkey, *v, e)) return std::nullopt;
  return e;
}

void DiskTier::read(const DiskEntry& entry, std::span<std::byte> dst,
                    std::function<void(Status)> done) {
  impl_->start_read(entry, dst, std::move(done));
}

void DiskTier::Impl::start_read(const DiskEntry& entry, std::span<std::byte> dst,
                                std::function<void(Status)> done) {
  if (dst.size() < entry.payload_bytes)
    return done(error(Errc::kInvalidArgument, "disk tier: destination too small"));
  bool gone = false;
  {
    MutexLock lock(mu_);
    auto it = regions_.find(entry.region);
    gone = stop_ || it == regions_.end() || it->second.reclaiming ||
           entry.offset > it->second.write_end ||
           entry.disk_bytes > it->second.write_end - entry.offset;  // without wrapping
    if (!gone) {
      ++it->second.readers;
      ++inflight_reads_;
    }
  }
  if (gone) return done(error(Errc::kNotFound, "disk tier: region reclaimed"));
  auto op = std::make_shared<ReadOp>();
  op->e = entry;
  op->dst = dst;
  op->done = std::move(done);
  // Uncompressed payloads are read straight into dst when it is page aligned (O_DIRECT needs
  // buffer, offset and length aligned): the whole pages directly, the last partial page
  // through a one-page bounce buffer.  Everything else goes through a bounce buffer.
  const uint64_t stored = entry.disk_bytes;
  op->direct = entry.compression == 0 && stored == entry.payload_bytes &&
               reinterpret_cast<uintptr_t>(dst.data()) % kDiskAlign == 0 && stored >= kDiskAlign;
  struct Piece {
    uint64_t off;
    std::span<std::byte> buf;
  };
  std::vector<Piece> pieces;
  auto split = [&](uint64_t off, std::span<std::byte> b) {
    for (size_t at = 0; at < b.size(); at += kIoChunk)
      pieces.push_back({off + at, b.subspan(at, std::min<size_t>(kIoChunk, b.size() - at))});
  };
  if (op->direct) {
    const uint64_t whole = stored / kDiskAlign * kDiskAlign;
    split(entry.offset, dst.first(whole));
    if (whole < stored) {
      op->tail = AlignedBuffer(kDiskAlign);
      pieces.push_back({entry.offset + whole, op->tail.span()});
    }
  } else {
    op->buf = AlignedBuffer(std::max<uint64_t>(stored, 1));
    split(entry.offset, op->buf.span());
  }
  {
    MutexLock lock(op->mu);  // before any completion can run
    op->pending = pieces.size();
  }
  for (const Piece& p : pieces) {
    // A short transfer is only an error where it ends before the stored bytes do.
    const uint64_t need = std::min<uint64_t>(p.buf.size(), entry.offset + stored - p.off);
    dev->read(entry.region, p.off, p.buf, [this, op, need](Result<size_t> r) {
      {
        MutexLock lock(op->mu);
        if (op->io) {
          if (!r)
            op->io = r.status();
          else if (r.value() < need)
            op->io = error(Errc::kIo, "disk tier: short read");
        }
        if (--op->pending > 0) return;
      }
      post([this, op] { finish_read(*op); });
    });
  }
  dev->submit();
}

void DiskTier::Impl::finish_read(ReadOp& op) {
  const DiskEntry& e = op.e;
  std::span<std::byte> dst = op.dst;
  const std::byte* stored = op.direct ? dst.data() : op.buf.data();
  Status s;
  bool io_error = false;
  Status io;
  {
    MutexLock lock(op.mu);  // the last completion wrote it; taken for the analysis' sake
    io = op.io;
  }
  if (!io) {
    s = io;
    io_error = true;
  } else {
    if (op.direct && op.tail.size()) {  // the last partial page, from the bounce page
      const uint64_t whole = e.disk_bytes / kDiskAlign * kDiskAlign;
      std::memcpy(dst.data() + whole, op.tail.data(), e.disk_bytes - whole);
    }
    if (checksum64(stored, e.disk_bytes) != e.checksum) {
      s = error(Errc::kCorrupt, "disk tier: checksum mismatch");
    } else if (e.compression == uint8_t(DiskCompression::kZstdPlanes2)) {
      s = decompress_planes2({stored, e.disk_bytes}, dst.first(e.payload_bytes));
    } else if (e.compression != 0 || e.disk_bytes != e.payload_bytes) {
      s = error(Errc::kCorrupt, "disk tier: unknown compression");
    } else if (!op.direct && e.payload_bytes > 0) {  // an empty dst may have no data()
      std::memcpy(dst.data(), stored, e.payload_bytes);
    }
  }
  uint64_t dropped = 0;
  if (s.code() == Errc::kCorrupt)
    dropped = drop({{encode_block_key(e.ns, e.key), e.region, e.offset}});
  {
    MutexLock lock(mu_);
    if (auto it = regions_.find(e.region); it != regions_.end()) --it->second.readers;
    if (s) {
      ++c_.reads;
      c_.read_bytes += e.payload_bytes;
      touched_[encode_block_key(e.ns, e.key)] = now_unix_ms();
    }
    if (io_error) ++c_.read_errors;
    c_.corrupt_dropped += dropped;
    cv_.notify_all();
  }
  op.done(std::move(s));
  MutexLock lock(mu_);
  --inflight_reads_;
  cv_.notify_all();
}

Status DiskTier::Impl::read_sync(const DiskEntry& e, std::span<std::byte> dst) {
  std::promise<Status> p;
  auto f = p.get_future();
  start_read(e, dst, [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

Status DiskTier::remove(std::string_view ns, const BlockKey& key) {
  auto e = find(ns, key);
  if (!e) return error(Errc::kNotFound, "disk tier: no such key");
  if (impl_->drop({{encode_block_key(ns, key), e->region, e->offset}}) == 0)
    return error(Errc::kNotFound, "disk tier: no such key");
  return {};
}

uint64_t DiskTier::evict_entries(const std::function<bool(const DiskEntry&)>& match) {
  std::vector<Impl::Loc> locs;
  visit([&](const DiskEntry& e) {
    if (match(e)) locs.push_back({encode_block_key(e.ns, e.key), e.region, e.offset});
  });
  return impl_->drop(locs);
}

DiskUsage DiskTier::disk_usage() const {
  const Impl& m = *impl_;
  MutexLock lock(m.mu_);
  DiskUsage u = m.c_;
  u.capacity_bytes = m.opt.capacity_bytes;
  u.regions = m.regions_.size();
  u.queued_bytes = m.queued_bytes_;
  u.used_bytes = u.payload_bytes = u.blocks = u.disk_bytes = 0;
  for (auto& [id, r] : m.regions_) {
    u.used_bytes += r.write_end;
    u.payload_bytes += r.payload_bytes;
    u.disk_bytes += r.disk_bytes;
    u.blocks += r.blocks;
  }
  return u;
}

TierUsage DiskTier::usage() const {
  const DiskUsage d = disk_usage();
  TierUsage u;
  u.capacity_bytes = d.capacity_bytes;
  u.used_bytes = d.used_bytes;
  u.reserved_bytes = d.queued_bytes;
  u.raw_bytes = d.payload_bytes;
  u.blocks = d.blocks;
  return u;
}

std::vector<DiskEntry> DiskTier::Impl::entries() const {
  std::vector<DiskEntry> out;
  std::string after;
  for (;;) {
    size_t n = index->scan_blocks(after, 4096, [&](std::string_view k, std::string_view v) {
      DiskEntry e;
      if (decode_entry(k, v, e)) out.push_back(std::move(e));
      after = std::string(k);
    });
    if (n < 4096) return out;
  }
}

void DiskTier::visit(const std::function<void(const DiskEntry&)>& fn) const {
  std::string after;
  for (;;) {  // chunks, so that fn runs with no transaction open
    std::vector<DiskEntry> chunk;
    size_t n = impl_->index->scan_blocks(after, 1024, [&](std::string_view k, std::string_view v) {
      DiskEntry e;
      if (decode_entry(k, v, e)) chunk.push_back(std::move(e));
      after = std::string(k);
    });
    for (const DiskEntry& e : chunk) fn(e);
    if (n < 1024) return;
  }
}

void DiskTier::flush() {
  Impl& m = *impl_;
  MutexLock lock(m.mu_);
  m.cv_.wait(lock, [&] {
    m.mu_.assert_held();  // the wait holds it when it asks
    return m.unfinished_ == 0;
  });
}

void DiskTier::check_readers() {
  impl_->index->check_readers();
}

}  // namespace kvtier
