// The remote tier's counters (common/counters.h): kvtier_remote_*, its cluster client's and
// its nodes' state.  Read from atomics and the cluster client's own lock.
#include <nlohmann/json.hpp>

#include "common/counters_json.h"
#include "tiers/remote/remote_tier.h"

namespace kvtier {

void RemoteTier::visit_counters(CounterVisitor& v) const {
  auto counter = [&](std::string_view name, std::string_view help, std::string_view json,
                     const std::atomic<uint64_t>& c) {
    v.counter({name, help, json}, {}, c.load(std::memory_order_relaxed));
  };
  counter("kvtier_remote_hits_total", "blocks found and fetched from the cluster", "hits", n_.hits);
  counter("kvtier_remote_misses_total",
          "blocks looked for in the cluster and not found (or unreachable, or dropped)", "misses",
          n_.misses);
  counter("kvtier_remote_read_bytes_total",
          "bytes of blocks read from the cluster into the host tier", "read_bytes", n_.read_bytes);
  counter("kvtier_remote_writes_total", "blocks stored in the cluster", "writes", n_.writes);
  counter("kvtier_remote_written_bytes_total", "bytes of blocks stored, before compression",
          "write_bytes", n_.write_bytes);
  counter("kvtier_remote_writes_skipped_total",
          "writes skipped because the cluster held the block already", "writes_skipped",
          n_.writes_skipped);
  counter("kvtier_remote_write_errors_total", "writes that failed (unreachable node, error reply)",
          "write_errors", n_.write_errors);
  counter("kvtier_remote_writes_dropped_total", "writes refused because the queue was full",
          "writes_dropped", n_.writes_dropped);
  counter("kvtier_remote_probes_total", "existence checks (one per lookup that reached the tier)",
          "probes", n_.probes);
  counter("kvtier_remote_probe_keys_total", "keys checked by probes", "probe_keys", n_.probe_keys);
  counter("kvtier_remote_probe_hits_total", "keys probes found", "probe_hits", n_.probe_hits);
  counter("kvtier_remote_probe_errors_total", "probe keys not answered (unreachable node)",
          "probe_errors", n_.probe_errors);
  counter("kvtier_remote_fetch_errors_total", "fetches that failed (unreachable node, timeout)",
          "fetch_errors", n_.fetch_errors);
  counter("kvtier_remote_corrupt_dropped_total",
          "values dropped: bad header, checksum, another block's key, a missing part",
          "corrupt_dropped", n_.corrupt_dropped);
  counter("kvtier_remote_removes_total", "blocks deleted from the cluster", "removes", n_.removes);
  counter("kvtier_remote_connects_total", "connections to the cluster made (slot map loaded)",
          "connects", n_.connects);
  counter("kvtier_remote_connect_failures_total", "attempts to reach the cluster that failed",
          "connect_failures", n_.connect_failures);
  v.gauge({"kvtier_remote_queued_bytes", "bytes of writes queued for the cluster", "queued_bytes"},
          {}, queued_bytes_.load(std::memory_order_relaxed));
  std::shared_ptr<redis::Cluster> c;
  {
    MutexLock lock(mu_);
    c = cluster_;
  }
  v.gauge({"kvtier_remote_connected", "1 when the cluster's slot map is loaded", "connected"}, {},
          c ? 1 : 0);
  if (c) {
    const redis::ClusterCounters cc = c->counters();
    v.counter({"kvtier_remote_round_trips_total", "pipelines sent to cluster nodes", "round_trips"},
              {}, cc.round_trips);
    v.counter({"kvtier_remote_commands_total", "Redis commands sent", "commands"}, {}, cc.commands);
    v.counter({"kvtier_remote_moved_total", "MOVED redirects followed", "moved"}, {}, cc.moved);
    v.counter({"kvtier_remote_ask_total", "ASK redirects followed", "ask"}, {}, cc.ask);
    v.counter({"kvtier_remote_slot_map_refreshes_total", "slot map reloads", "slot_map_refreshes"},
              {}, cc.slot_map_refreshes);
    v.counter({"kvtier_remote_connection_errors_total", "connections to nodes that failed",
               "connection_errors"},
              {}, cc.connection_errors);
    v.counter({"kvtier_remote_timeouts_total", "node round trips that timed out", "timeouts"}, {},
              cc.timeouts);
    for (const redis::NodeState& n : c->nodes()) {
      const Label node[] = {{"node", n.address}};
      v.gauge({"kvtier_remote_node_up", "1 when the node answered its last round trip"}, node,
              n.reachable ? 1 : 0);
      v.gauge({"kvtier_remote_node_slots", "hash slots the node serves as master"}, node, n.slots);
    }
  }
  const struct {
    std::string_view op;
    const LatencyHistogram& h;
  } latencies[] = {{"probe", probe_latency_}, {"fetch", fetch_latency_}, {"write", write_latency_}};
  for (const auto& l : latencies) {
    const LatencyHistogram::Snapshot s = l.h.snapshot();
    const Label op[] = {{"op", l.op}};
    v.histogram({"kvtier_remote_duration_seconds",
                 "time of one remote operation on a worker thread, by operation",
                 l.op == "probe"   ? "probe_latency"
                 : l.op == "fetch" ? "fetch_latency"
                                   : "write_latency"},
                op, s.data());
  }
}

nlohmann::json RemoteTier::stats_json() const {
  nlohmann::json out = nlohmann::json::object();
  JsonCounterVisitor v(out);
  visit_counters(v);
  std::shared_ptr<redis::Cluster> c;
  {
    MutexLock lock(mu_);
    c = cluster_;
  }
  out["nodes"] = nlohmann::json::array();
  if (c)
    for (const redis::NodeState& n : c->nodes())
      out["nodes"].push_back(
          {{"address", n.address}, {"up", n.reachable}, {"slots", n.slots}, {"errors", n.errors}});
  return out;
}

}  // namespace kvtier
