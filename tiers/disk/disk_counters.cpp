// The disk tier's counters and gauges (common/counters.h): the families every tier reports
// (tiers/tier_counters.h), labelled tier="disk", and the disk's own (kvtier_disk_*).
#include "tiers/disk/disk_tier.h"
#include "tiers/tier_counters.h"

namespace kvtier {

void DiskTier::visit_counters(CounterVisitor& v) const {
  using namespace tier_metrics;
  const DiskUsage u = disk_usage();  // one hold of the tier's lock
  const Label tier[] = {{"tier", "disk"}};
  v.gauge(kCapacityBytes, tier, u.capacity_bytes);
  v.gauge(kUsedBytes, tier, u.used_bytes);
  v.gauge({"kvtier_disk_stored_bytes", "bytes of the live entries as stored (compressed)",
           "stored_bytes"},
          {}, u.disk_bytes);
  v.gauge(kRawBytes, tier, u.payload_bytes);
  v.gauge(kCompressionRatio, tier, ratio(u.payload_bytes, u.disk_bytes));
  v.gauge(kBlocks, tier, u.blocks);
  v.gauge({"kvtier_disk_regions", "region files in use", "regions"}, {}, u.regions);
  v.gauge({"kvtier_disk_queued_bytes", "bytes of blocks queued for writing", "queued_bytes"}, {},
          u.queued_bytes);
  v.counter({"kvtier_disk_writes_total", "blocks written, synced and indexed", "writes"}, {},
            u.writes);
  v.counter({"kvtier_disk_written_bytes_total", "bytes of the blocks written, before compression",
             "write_bytes"},
            {}, u.write_bytes);
  v.counter({"kvtier_disk_reads_total", "blocks read and verified", "reads"}, {}, u.reads);
  v.counter({"kvtier_disk_read_bytes_total", "bytes of the blocks read, after decompression",
             "read_bytes"},
            {}, u.read_bytes);
  v.counter({"kvtier_disk_write_errors_total", "block writes that failed", "write_errors"}, {},
            u.write_errors);
  v.counter({"kvtier_disk_read_errors_total", "block reads that failed (I/O)", "read_errors"}, {},
            u.read_errors);
  v.counter({"kvtier_disk_corrupt_dropped_total",
             "blocks whose checksum did not match on read: dropped, reported as misses",
             "corrupt_dropped"},
            {}, u.corrupt_dropped);
  v.counter(
      {"kvtier_disk_regions_reclaimed_total", "regions freed to make room", "regions_reclaimed"},
      {}, u.regions_reclaimed);
  v.gauge({"kvtier_disk_dropped_at_open",
           "index entries dropped when the tier was opened (torn by a crash)", "dropped_at_open"},
          {}, u.dropped_at_open);
  v.gauge({"kvtier_disk_regions_dropped_at_open",
           "region files dropped when the tier was opened (no durable record)",
           "regions_dropped_at_open"},
          {}, u.regions_dropped_at_open);
}

}  // namespace kvtier
