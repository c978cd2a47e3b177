// The write pipeline: the writer thread compresses, places and submits batches; the committer
// thread waits for a batch's I/O, syncs its regions, commits its entries in one LMDB
// transaction and runs the callbacks.  Region creation and FIFO reclaim live here too.
#include <cstring>

#include "tiers/disk/disk_tier_impl.h"

namespace kvtier {

void DiskTier::Impl::writer_loop() {
  for (;;) {
    auto b = std::make_unique<Batch>();
    {
      MutexLock lock(mu_);
      cv_.wait(lock, [&] {
        mu_.assert_held();  // the wait holds it when it asks
        return stop_ || !queue_.empty();
      });
      if (queue_.empty()) {
        writer_done_ = true;
        cv_.notify_all();
        return;
      }
      uint64_t bytes = 0;
      while (!queue_.empty() &&
             (b->jobs.empty() || bytes + queue_.front()->payload_bytes <= opt.batch_bytes)) {
        bytes += queue_.front()->payload_bytes;
        b->jobs.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    for (auto& j : b->jobs) {
      prepare(*j);
      j->status = place(*j);
    }
    // Big payloads go out as several kIoChunk submissions, all in flight at once; a job is
    // complete when its last chunk is (batch->pending counts chunks), and any failed chunk
    // fails the job.
    {
      MutexLock lock(mu_);
      b->pending = 0;
      for (auto& jp : b->jobs)
        if (jp->status) b->pending += (jp->bytes().size() + kIoChunk - 1) / kIoChunk;
    }
    for (auto& jp : b->jobs) {
      if (!jp->status) continue;
      Job* j = jp.get();
      Batch* batch = b.get();
      const auto all = j->bytes();
      for (size_t at = 0; at < all.size(); at += kIoChunk) {
        const auto part = all.subspan(at, std::min<size_t>(kIoChunk, all.size() - at));
        dev->write(j->region, j->offset + at, part,
                   [this, j, batch, n = part.size()](Result<size_t> r) {
                     Status st;
                     if (!r)
                       st = r.status();
                     else if (r.value() < n)
                       st = error(Errc::kIo, "disk tier: short write");
                     MutexLock lock(mu_);
                     if (!st && j->status) j->status = std::move(st);  // the first failure wins
                     if (--batch->pending == 0) cv_.notify_all();
                   });
      }
    }
    dev->submit();
    MutexLock lock(mu_);
    batches_.push_back(std::move(b));
    cv_.notify_all();
  }
}

void DiskTier::Impl::prepare(Job& j) {
  j.disk_bytes = j.payload_bytes;
  j.compression = 0;
  if (j.compress && compressible(j.layout, j.payload_bytes)) {
    std::vector<std::byte> out;
    if (compress_planes2({j.payload.data(), j.payload_bytes}, out)) {
      j.stored = AlignedBuffer(out.size());
      std::memcpy(j.stored.data(), out.data(), out.size());
      std::memset(j.stored.data() + out.size(), 0, j.stored.size() - out.size());
      j.disk_bytes = out.size();
      j.compression = uint8_t(DiskCompression::kZstdPlanes2);
    }
  }
  j.checksum = checksum64(j.bytes().data(), j.disk_bytes);
}

Status DiskTier::Impl::place(Job& j) {
  const uint64_t need = align_up(j.disk_bytes, kDiskAlign);
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      MutexLock lock(mu_);
      if (cur_region_) {
        Region& r = regions_.at(*cur_region_);
        if (r.write_end + need <= opt.region_bytes) {
          j.region = *cur_region_;
          j.offset = r.write_end;
          r.write_end += need;
          ++r.writes;
          return {};
        }
      }
    }
    if (Status s = open_region(); !s) return s;
  }
  return error(Errc::kInternal, "disk tier: block does not fit a fresh region");
}

Status DiskTier::Impl::open_region() {
  for (;;) {  // FIFO reclaim: the oldest region goes once its readers drain
    std::optional<uint32_t> victim;
    {
      MutexLock lock(mu_);
      if (regions_.size() < max_regions) break;
      for (auto& [id, r] : regions_)
        if (!r.reclaiming && id != cur_region_) {
          victim = id;
          break;
        }
      if (!victim) {
        cv_.wait(lock);
        continue;
      }
    }
    reclaim(*victim);
  }
  const uint32_t id = next_region_++;
  RegionRecord rec;
  rec.created_unix_ms = now_unix_ms();
  Status s = dev->create_region(id, opt.region_bytes);
  if (s) {
    AlignedBuffer page(kRegionHeaderBytes);
    write_region_header(page.span(), id, opt.region_bytes, rec.created_unix_ms);
    auto w = write_sync(*dev, id, 0, page.span());
    if (!w)
      s = w.status();
    else if (w.value() != kRegionHeaderBytes)
      s = error(Errc::kIo, "disk tier: short header write");
  }
  // No fdatasync and no record here: the record is committed with the first batch that
  // writes this region, after that batch's fdatasync (which covers the header too).  A crash
  // before then leaves a file with no record, deleted at open().
  if (!s) {
    (void)dev->remove_region(id);
    return s;
  }
  MutexLock lock(mu_);
  Region& r = regions_[id];
  r.rec = rec;
  r.write_end = kRegionHeaderBytes;
  cur_region_ = id;
  cv_.notify_all();
  return {};
}

bool DiskTier::Impl::reclaim(uint32_t region) {
  {
    MutexLock lock(mu_);
    auto it = regions_.find(region);
    if (it == regions_.end() || it->second.reclaiming) return false;
    it->second.reclaiming = true;  // no new reads from here on
    cv_.wait(lock, [&] {
      mu_.assert_held();  // the wait holds it when it asks
      return it->second.readers == 0 && it->second.writes == 0;
    });
  }
  Status s;
  std::vector<std::string> gone;  // the "blocks" keys this reclaim drops
  {
    auto txn = index->begin_write();
    if (!txn) s = txn.status();
    if (s) {
      for (auto& [off, bkey] : txn->region_blocks(region)) {
        DiskEntry e;
        auto v = txn->get_block(bkey);
        if (v && decode_entry_fixed(*v, e) && e.region == region && e.offset == off) {
          txn->del_block(bkey);
          gone.push_back(bkey);
        }
        txn->del_by_region(region, off);
      }
      txn->del_region(region);
      s = txn->commit();
    }
  }
  MutexLock lock(mu_);
  if (!s) {
    regions_.at(region).reclaiming = false;
    cv_.notify_all();
    return false;
  }
  (void)dev->remove_region(region);
  regions_.erase(region);
  ++c_.regions_reclaimed;
  cv_.notify_all();
  lock.unlock();
  report_removed(gone);
  return true;
}

void DiskTier::Impl::committer_loop() {
  for (;;) {
    std::unique_ptr<Batch> b;
    {
      MutexLock lock(mu_);
      cv_.wait(lock, [&] {
        mu_.assert_held();  // the wait holds it when it asks
        return (!batches_.empty() && batches_.front()->pending == 0) ||
               (writer_done_ && batches_.empty());
      });
      if (batches_.empty()) return;
      b = std::move(batches_.front());
      batches_.pop_front();
      // Group commit: every further batch whose I/O has finished joins this one, so a
      // committer that fell behind syncs and commits them with one fdatasync per region and
      // one LMDB transaction (the device keeps writing the batches behind them meanwhile).
      while (!batches_.empty() && batches_.front()->pending == 0 &&
             b->jobs.size() < kMaxGroupJobs) {
        for (auto& j : batches_.front()->jobs) b->jobs.push_back(std::move(j));
        batches_.pop_front();
      }
    }
    commit_batch(*b);
  }
}

void DiskTier::Impl::commit_batch(Batch& b) {
  // 1. Make the payloads durable: one fdatasync per region the batch wrote.
  std::map<uint32_t, Status> synced;
  for (auto& j : b.jobs)
    if (j->status && !synced.count(j->region))
      synced[j->region] = opt.durable ? dev->sync(j->region) : Status();
  for (auto& j : b.jobs)
    if (j->status && !synced[j->region]) j->status = synced[j->region];
  // 2. Only now index them, with the regions' new durable ends, in one transaction.
  std::unordered_map<std::string, uint64_t> touched;
  std::map<uint32_t, RegionRecord> recs;
  {
    MutexLock lock(mu_);
    touched.swap(touched_);
    for (auto& j : b.jobs)
      if (j->status) {
        RegionRecord& rec = recs.try_emplace(j->region, regions_.at(j->region).rec).first->second;
        rec.durable_end =
            std::max(rec.durable_end, j->offset + align_up(j->disk_bytes, kDiskAlign));
        rec.state = j->region == cur_region_ ? 0 : 1;
      }
  }
  Status ts;
  {
    auto txn = index->begin_write();
    if (!txn) ts = txn.status();
    for (auto& j : b.jobs) {
      if (!ts || !j->status) continue;
      DiskEntry e;
      e.ns = j->ns;
      e.key = j->key;
      e.layout = j->layout;
      e.payload_bytes = j->payload_bytes;
      e.disk_bytes = j->disk_bytes;
      e.region = j->region;
      e.offset = j->offset;
      e.compression = j->compression;
      e.checksum = j->checksum;
      e.last_access_unix_ms = now_unix_ms();
      if (j->replaces) {  // only if the entry was neither removed nor moved meanwhile
        DiskEntry cur;
        auto v = txn->get_block(j->bkey);
        if (!v || !decode_entry_fixed(*v, cur) || cur.region != j->replaces->first ||
            cur.offset != j->replaces->second) {
          j->status = error(Errc::kNotFound, "disk tier: entry changed during compaction");
          continue;
        }
        txn->del_by_region(j->replaces->first, j->replaces->second);
      }
      Status s = txn->put_block(j->bkey, encode_entry(e), !j->replaces);
      if (s)
        txn->put_by_region(j->region, j->offset, j->bkey);
      else
        j->status = s;
    }
    for (auto& [id, rec] : recs)
      if (ts) ts = txn->put_region(id, rec);
    for (auto& [k, ms] : touched)
      if (ts)
        if (auto v = txn->get_block(k)) {
          patch_last_access(*v, ms);
          (void)txn->put_block(k, *v, false);
        }
    if (ts) ts = txn->commit();
  }
  // 3. Publish the counters, then run the callbacks without the lock.
  {
    MutexLock lock(mu_);
    for (auto& [id, rec] : recs)
      if (ts)
        regions_.at(id).rec.durable_end =
            std::max(regions_.at(id).rec.durable_end, rec.durable_end);
    for (auto& j : b.jobs) {
      queued_bytes_ -= j->payload_bytes;
      if (!ts && j->status) j->status = ts;
      if (j->offset != 0)  // placed: no longer holds its region against reclaim
        if (auto it = regions_.find(j->region); it != regions_.end()) --it->second.writes;
      if (!j->status) {
        if (j->status.code() != Errc::kAlreadyExists && j->status.code() != Errc::kNotFound)
          ++c_.write_errors;
        continue;
      }
      Region& r = regions_.at(j->region);
      ++r.blocks;
      r.disk_bytes += j->disk_bytes;
      r.payload_bytes += j->payload_bytes;
      ++c_.writes;
      c_.write_bytes += j->payload_bytes;
      if (j->replaces)
        if (auto it = regions_.find(j->replaces->first); it != regions_.end()) {
          Region& o = it->second;
          o.blocks -= std::min<uint64_t>(o.blocks, 1);
          o.disk_bytes -= std::min(o.disk_bytes, j->replaced_disk_bytes);
          o.payload_bytes -= std::min(o.payload_bytes, j->payload_bytes);
        }
    }
    cv_.notify_all();
  }
  if (!ts) touched.clear();  // lost access times are harmless
  for (auto& j : b.jobs)
    if (j->done) j->done(j->status);
  MutexLock lock(mu_);  // flush() returns only after the callbacks ran
  for (auto& j : b.jobs) {
    if (!j->replaces) pending_.erase(j->bkey);
    give_buffer(std::move(j->payload));
  }
  unfinished_ -= b.jobs.size();
  cv_.notify_all();
}

}  // namespace kvtier
