// Open-time recovery, index deletions, and the admin calls: verify and compact.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
#include <set>

#include "tiers/disk/disk_tier_impl.h"

namespace kvtier {

// A region survives open() when its record, its file and its header agree; its durable end is
// the smaller of the recorded durable end and the file size.  Entries past that end, or in a
// region that did not survive, are dropped (docs/disk.md, "Crash consistency").
Status DiskTier::Impl::recover() {
  std::map<uint32_t, RegionRecord> recs = index->regions();
  std::vector<uint32_t> files = dev->list_regions();
  std::set<uint32_t> bad;
  uint32_t max_id = 0;
  for (uint32_t id : files) {
    max_id = std::max(max_id, id);
    if (!recs.count(id)) {  // created, never committed: a crash during region creation
      (void)dev->remove_region(id);
      ++c_.regions_dropped_at_open;
    }
  }
  std::set<uint32_t> present(files.begin(), files.end());
  for (auto& [id, rec] : recs) {
    max_id = std::max(max_id, id);
    uint64_t end = 0;
    if (present.count(id) && dev->open_region(id)) {
      AlignedBuffer page(kRegionHeaderBytes);
      auto r = kvtier::read_sync(*dev, id, 0, page.span());
      auto size = dev->region_size(id);
      if (r && r.value() == kRegionHeaderBytes && check_region_header(page.span(), id) && size)
        end = std::min(rec.durable_end, size.value());
    }
    if (end < kRegionHeaderBytes) {
      bad.insert(id);
      ++c_.regions_dropped_at_open;
      continue;
    }
    Region& reg = regions_[id];
    reg.rec = rec;
    reg.rec.durable_end = end;
    reg.write_end = end;  // never appended to again: writes go to a fresh region
  }
  next_region_ = max_id + 1;

  std::vector<Loc> doomed;
  std::string after;
  for (;;) {
    size_t n = index->scan_blocks(
        after, 8192,
        [&](std::string_view k, std::string_view v) NO_THREAD_SAFETY_ANALYSIS {  // recover()'s
          after = std::string(k);
          DiskEntry e;
          auto it = decode_entry_fixed(v, e) ? regions_.find(e.region) : regions_.end();
          // Without wrapping: offset + disk_bytes <= durable_end.  A payload is never larger than
          // a region (write() refuses such blocks); the region's own size covers a file written
          // with a larger region_bytes than the one configured now.
          const uint64_t end = it == regions_.end() ? 0 : it->second.rec.durable_end;
          if (it == regions_.end() || e.offset < kRegionHeaderBytes || e.offset > end ||
              e.disk_bytes > end - e.offset || e.payload_bytes > std::max(opt.region_bytes, end)) {
            doomed.push_back({std::string(k), e.region, e.offset});
            return;
          }
          ++it->second.blocks;
          it->second.disk_bytes += e.disk_bytes;
          it->second.payload_bytes += e.payload_bytes;
        });
    if (n < 8192) break;
  }
  if (doomed.empty() && bad.empty()) return {};
  auto txn = index->begin_write();
  if (!txn) return txn.status();
  for (const Loc& l : doomed) {
    txn->del_block(l.bkey);
    txn->del_by_region(l.region, l.offset);
  }
  for (uint32_t id : bad) {
    for (auto& [off, bkey] : txn->region_blocks(id)) txn->del_by_region(id, off);
    txn->del_region(id);
  }
  for (auto& [id, reg] : regions_)  // the durable end may have shrunk to the file size
    if (reg.rec.durable_end != recs[id].durable_end)
      if (Status s = txn->put_region(id, reg.rec); !s) return s;
  if (Status s = txn->commit(); !s) return s;
  for (uint32_t id : bad) (void)dev->remove_region(id);
  c_.dropped_at_open = doomed.size();
  return {};
}

void DiskTier::Impl::report_removed(const std::vector<std::string>& bkeys) {
  std::function<void(std::string_view, std::span<const BlockKey>)> fn;
  {
    MutexLock lock(mu_);
    fn = on_removed_;
  }
  if (!fn || bkeys.empty()) return;
  // One call per run of keys of one namespace (a reclaimed region holds runs of them).
  auto be64 = [](std::string_view b) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(b[i]);
    return v;
  };
  std::vector<BlockKey> run;
  std::string_view run_ns;
  for (const std::string& k : bkeys) {
    if (k.size() < 16) continue;
    const std::string_view ns = std::string_view(k).substr(16);
    if (!run.empty() && ns != run_ns) {
      fn(run_ns, run);
      run.clear();
    }
    run_ns = ns;
    run.push_back(BlockKey{be64(std::string_view(k).substr(8, 8)), be64(k)});
  }
  if (!run.empty()) fn(run_ns, run);
}

void DiskTier::set_removed_listener(
    std::function<void(std::string_view ns, std::span<const BlockKey>)> fn) {
  MutexLock lock(impl_->mu_);
  impl_->on_removed_ = std::move(fn);
}

uint64_t DiskTier::Impl::drop(const std::vector<Loc>& locs) {
  if (locs.empty()) return 0;
  std::vector<DiskEntry> gone;
  std::vector<std::string> bkeys;  // of `gone`
  {
    auto txn = index->begin_write();
    if (!txn) return 0;
    for (const Loc& l : locs) {
      DiskEntry e;
      auto v = txn->get_block(l.bkey);
      if (!v || !decode_entry_fixed(*v, e) || e.region != l.region || e.offset != l.offset)
        continue;
      txn->del_block(l.bkey);
      txn->del_by_region(l.region, l.offset);
      gone.push_back(e);
      bkeys.push_back(l.bkey);
    }
    if (gone.empty() || !txn->commit()) return 0;
  }
  report_removed(bkeys);
  MutexLock lock(mu_);
  for (const DiskEntry& e : gone)
    if (auto it = regions_.find(e.region); it != regions_.end()) {
      Region& r = it->second;
      r.blocks -= std::min<uint64_t>(r.blocks, 1);
      r.disk_bytes -= std::min(r.disk_bytes, e.disk_bytes);
      r.payload_bytes -= std::min(r.payload_bytes, e.payload_bytes);
    }
  cv_.notify_all();
  return gone.size();
}

Result<DiskTier::VerifyReport> DiskTier::verify(const std::function<void(Progress)>& progress) {
  std::vector<DiskEntry> all = impl_->entries();
  VerifyReport rep;
  std::vector<std::byte> buf;
  for (const DiskEntry& e : all) {
    buf.resize(e.payload_bytes);
    Status s = impl_->read_sync(e, buf);
    ++rep.checked;
    if (s.code() == Errc::kCorrupt) ++rep.corrupt;
    if (progress) progress({rep.checked, all.size()});
  }
  return rep;
}

Result<DiskTier::CompactReport> DiskTier::compact(const std::function<void(Progress)>& progress) {
  Impl& m = *impl_;
  flush();
  std::vector<uint32_t> sparse;
  uint64_t total = 0;
  {
    MutexLock lock(m.mu_);
    for (auto& [id, r] : m.regions_)
      if (id != m.cur_region_ && !r.reclaiming &&
          2 * (r.disk_bytes + r.blocks * kDiskAlign) < r.write_end - kRegionHeaderBytes) {
        sparse.push_back(id);
        total += r.blocks;
      }
  }
  CompactReport rep;
  Progress p{0, total};
  std::atomic<uint64_t> moved{0};
  for (uint32_t id : sparse) {
    std::vector<DiskEntry> live;
    for (DiskEntry& e : m.entries())
      if (e.region == id) live.push_back(std::move(e));
    for (const DiskEntry& e : live) {
      std::vector<std::byte> payload(e.payload_bytes);
      if (m.read_sync(e, payload)) {
        auto job = std::make_unique<Impl::Job>();
        job->ns = e.ns;
        job->bkey = encode_block_key(e.ns, e.key);
        job->key = e.key;
        job->layout = e.layout;
        job->payload = AlignedBuffer(e.payload_bytes);
        std::memcpy(job->payload.data(), payload.data(), payload.size());
        std::memset(job->payload.data() + payload.size(), 0, job->payload.size() - payload.size());
        job->payload_bytes = e.payload_bytes;
        job->compress = e.compression != 0;
        job->replaces = std::make_pair(e.region, e.offset);
        job->replaced_disk_bytes = e.disk_bytes;
        job->done = [&moved](Status s) {
          if (s) ++moved;
        };
        {
          MutexLock lock(m.mu_);
          m.queued_bytes_ += e.payload_bytes;
        }
        m.enqueue(std::move(job));
      }
      ++p.done;
      if (progress) progress(p);
    }
    flush();
    uint64_t bytes = 0, blocks = 1;
    {
      MutexLock lock(m.mu_);
      if (auto it = m.regions_.find(id); it != m.regions_.end()) {
        bytes = it->second.write_end;
        blocks = it->second.blocks;
      }
    }
    if (blocks == 0 && m.reclaim(id)) {  // every live entry moved (or none was left)
      ++rep.regions_freed;
      rep.bytes_freed += bytes;
    }
  }
  rep.moved = moved.load();
  return rep;
}

}  // namespace kvtier
