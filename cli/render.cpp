#include "cli/render.h"

#include <algorithm>
#include <cstdio>
#include <iomanip>

namespace kvtierctl {

std::string human_bytes(uint64_t b) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::function<void(uint64_t, uint64_t)> ProgressBar::callback() {
  return [this](uint64_t done, uint64_t total) {
    if (!enabled_) return;
    const int width = 30;
    const double f = total ? std::min(1.0, double(done) / double(total)) : 0.0;
    const int filled = static_cast<int>(f * width);
    std::fprintf(stderr, "\r%s [%.*s%*s] %5.1f%% %llu/%llu", label_.c_str(), filled,
                 "##############################", width - filled, "", 100.0 * f,
                 (unsigned long long)done, (unsigned long long)total);
    std::fflush(stderr);
    drawn_ = true;
  };
}

void ProgressBar::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

namespace {

uint64_t u64(const nlohmann::json& j, const char* key) {
  return j.value(key, uint64_t{0});
}

double ratio(uint64_t num, uint64_t den) {
  return den ? double(num) / double(den) : 0.0;
}

// "searches 3 (hit rate 66.7%)  fusion state: host 1.1 KiB, gpu0 0 B"; each part only when the
// daemon reports it (older daemons have neither).
void print_search_line(std::ostream& os, const nlohmann::json& j) {
  const auto& c = j.at("counters");
  std::string line;
  char buf[96];
  if (c.contains("searches")) {
    std::snprintf(buf, sizeof(buf), "searches %llu (hit rate %.1f%%)",
                  (unsigned long long)u64(c, "searches"),
                  100.0 * ratio(u64(c, "search_hits"), u64(c, "searches")));
    line = j.contains("index") ? buf : "searches: index off";
  }
  std::string fusion;  // "host 1.1 KiB, gpu0 0 B"
  auto add = [&](const std::string& tier, const nlohmann::json& t) {
    if (!t.contains("fusion_bytes")) return;
    fusion += (fusion.empty() ? "" : ", ") + tier + " " + human_bytes(u64(t, "fusion_bytes"));
  };
  const auto& tiers = j.at("tiers");
  add("host", tiers.value("host", nlohmann::json::object()));
  for (const auto& p :
       tiers.value("gpu", nlohmann::json::object()).value("pools", nlohmann::json::array()))
    add("gpu" + std::to_string(p.value("device", 0)), p);
  if (!fusion.empty()) line += (line.empty() ? "" : "  ") + ("fusion state: " + fusion);
  if (!line.empty()) os << line << "\n";
}

// The semantic index: one row per namespace and modality, columns sized to their contents.
void print_index(std::ostream& os, const nlohmann::json& idx, const char* bold, const char* reset) {
  struct Row {
    std::string ns, modality, type, dim, vectors, dead, searches, hit, mean;
    bool rebuilding;
  };
  std::vector<Row> rows;
  const nlohmann::json spaces = idx.value("namespaces", nlohmann::json::object());
  for (const auto& [ns, mods] : spaces.items()) {
    for (const auto& [m, s] : mods.items()) {
      const uint64_t n = u64(s, "searches"), hits = u64(s, "hits");
      char hit[16] = "-", mean[24] = "-";
      if (n) {
        std::snprintf(hit, sizeof(hit), "%.1f", 100.0 * ratio(hits, hits + u64(s, "misses")));
        std::snprintf(mean, sizeof(mean), "%.1f", s.value("search_us_mean", 0.0));
      }
      rows.push_back({ns, m, s.value("type", "?"), std::to_string(u64(s, "dim")),
                      std::to_string(u64(s, "vectors")), std::to_string(u64(s, "dead")),
                      std::to_string(n), hit, mean, s.value("rebuilding", false)});
    }
  }
  if (rows.empty()) return;
  size_t wns = 9, wm = 8, wt = 4;  // the headers' lengths
  for (const auto& r : rows) {
    wns = std::max(wns, r.ns.size());
    wm = std::max(wm, r.modality.size());
    wt = std::max(wt, r.type.size());
  }
  auto line = [&](const Row& r) {
    os << std::left << std::setw(int(wns)) << r.ns << "  " << std::setw(int(wm)) << r.modality
       << "  " << std::setw(int(wt)) << r.type << std::right << std::setw(6) << r.dim
       << std::setw(9) << r.vectors << std::setw(7) << r.dead << std::setw(10) << r.searches
       << std::setw(7) << r.hit << std::setw(9) << r.mean;
  };
  os << "\nsemantic index: " << idx.value("kernels", "?") << " kernels, exact up to "
     << u64(idx, "exact_max_vectors") << " vectors\n"
     << bold;
  line({"NAMESPACE", "MODALITY", "TYPE", "DIM", "VECTORS", "DEAD", "SEARCHES", "HIT%", "MEAN us",
        false});
  os << reset << "\n";
  for (const auto& r : rows) {
    line(r);
    os << (r.rebuilding ? "  rebuilding" : "") << "\n";
  }
}

}  // namespace

void print_stats(std::ostream& os, const nlohmann::json& j, bool tty) {
  const char* bold = tty ? "\033[1m" : "";
  const char* reset = tty ? "\033[0m" : "";
  os << bold << std::left << std::setw(6) << "TIER" << std::right << std::setw(12) << "USED"
     << std::setw(12) << "CAPACITY" << std::setw(7) << "USE%" << std::setw(10) << "BLOCKS"
     << std::setw(8) << "LEASED" << std::setw(11) << "EVICTIONS" << std::setw(8) << "RATIO" << reset
     << "\n";
  auto row = [&](const std::string& name, const nlohmann::json& t) {
    uint64_t used = u64(t, "used_bytes"), cap = u64(t, "capacity_bytes");
    char pct[16], comp[16];
    std::snprintf(pct, sizeof(pct), "%.1f", 100.0 * ratio(used, cap));
    std::snprintf(comp, sizeof(comp), "%.2fx", t.value("compression_ratio", 1.0));
    os << std::left << std::setw(6) << name << std::right << std::setw(12) << human_bytes(used)
       << std::setw(12) << human_bytes(cap) << std::setw(7) << pct << std::setw(10)
       << u64(t, "blocks") << std::setw(8) << u64(t, "leased_blocks") << std::setw(11)
       << u64(t, "evictions") << std::setw(8) << comp << "\n";
  };
  for (const auto& [name, t] : j.at("tiers").items()) {
    if (name == "remote") continue;  // shared by every host: its own line below
    if (name != "gpu") {
      row(name, t);
      if (name != "host" || !j.contains("arenas")) continue;
      // Each isolation domain's own arena (docs/operations.md, "Isolation domains").
      for (const auto& a : j.at("arenas"))
        if (!a.value("domain", "").empty()) row("host/" + a.value("domain", ""), a);
      continue;
    }
    // The GPU tier: one row per device pool ("gpu0"), none without a GPU tier.
    for (const auto& p : t.value("pools", nlohmann::json::array()))
      row("gpu" + std::to_string(p.value("device", 0)), p);
  }
  const auto& c = j.at("counters");
  char line[256];
  std::snprintf(line, sizeof(line),
                "\nsessions %llu  leases %llu  pending puts %llu\n"
                "lookups %llu (key hit rate %.1f%%)  gets %llu (hit rate %.1f%%)  puts %llu (%s)\n",
                (unsigned long long)u64(j, "sessions"), (unsigned long long)u64(j, "leases"),
                (unsigned long long)u64(j, "pending_puts"), (unsigned long long)u64(c, "lookups"),
                100.0 * ratio(u64(c, "lookup_hits"), u64(c, "lookup_keys")),
                (unsigned long long)u64(c, "gets"),
                100.0 * ratio(u64(c, "get_hits"), u64(c, "get_hits") + u64(c, "get_misses")),
                (unsigned long long)u64(c, "puts"), human_bytes(u64(c, "put_bytes")).c_str());
  os << line;
  print_search_line(os, j);
  std::snprintf(line, sizeof(line), "errors %llu  protocol errors %llu  denied %llu\n",
                (unsigned long long)u64(c, "errors"), (unsigned long long)u64(c, "protocol_errors"),
                (unsigned long long)u64(c, "permission_denied"));
  os << line;
  if (!j["tiers"]
           .value("gpu", nlohmann::json::object())
           .value("pools", nlohmann::json::array())
           .empty()) {
    std::snprintf(line, sizeof(line),
                  "gpu: puts %llu  hits %llu  promotions %llu (%s)  fallbacks %llu  "
                  "demotions %llu (dropped %llu)  copy-downs %llu\n",
                  (unsigned long long)u64(c, "gpu_puts"),
                  (unsigned long long)u64(c, "gpu_get_hits"),
                  (unsigned long long)u64(c, "gpu_promotions"),
                  human_bytes(u64(c, "gpu_promotion_bytes")).c_str(),
                  (unsigned long long)u64(c, "gpu_promotion_fallbacks"),
                  (unsigned long long)u64(c, "gpu_demotions"),
                  (unsigned long long)u64(c, "gpu_demotions_dropped"),
                  (unsigned long long)u64(c, "gpu_copy_downs"));
    os << line;
  }
  if (j["tiers"].contains("remote")) {
    const auto& r = j["tiers"]["remote"];
    size_t up = 0, nodes = 0;
    for (const auto& n : r.value("nodes", nlohmann::json::array())) {
      ++nodes;
      up += n.value("up", false) ? 1 : 0;
    }
    std::snprintf(
        line, sizeof(line),
        "remote: %s, %zu of %zu nodes up  hits %llu  misses %llu (%s read)  "
        "writes %llu (%s, %llu skipped, %llu dropped, %llu failed)  corrupt dropped %llu\n",
        u64(r, "connected") ? "connected" : "not connected", up, nodes,
        (unsigned long long)u64(r, "hits"), (unsigned long long)u64(r, "misses"),
        human_bytes(u64(r, "read_bytes")).c_str(), (unsigned long long)u64(r, "writes"),
        human_bytes(u64(r, "write_bytes")).c_str(), (unsigned long long)u64(r, "writes_skipped"),
        (unsigned long long)u64(r, "writes_dropped"), (unsigned long long)u64(r, "write_errors"),
        (unsigned long long)u64(r, "corrupt_dropped"));
    os << line;
  }
  if (j.contains("index")) print_index(os, j.at("index"), bold, reset);
}

void print_health(std::ostream& os, const nlohmann::json& j) {
  os << "status   " << j.value("status", "?") << "\n"
     << "version  " << j.value("version", "?") << " (protocol " << j.value("protocol", 0) << ")\n"
     << "pid      " << j.value("pid", 0) << "\n"
     << "uptime   " << j.value("uptime_s", uint64_t{0}) << " s\n"
     << "sessions " << j.value("sessions", uint64_t{0}) << "\n";
  for (const auto& [name, t] : j.at("tiers").items()) {
    os << "tier " << std::left << std::setw(5) << name << " " << t.value("backend", "?");
    if (t.contains("reason")) os << " (" << t.value("reason", "") << ")";
    if (t.contains("status")) os << " (" << t.value("status", "") << ")";
    if (t.contains("shm")) os << " " << t.value("shm", "");
    os << "\n";
  }
  if (j.contains("nf4"))
    os << "nf4      cpu " << j["nf4"].value("cpu_path", "?") << ", cuda "
       << j["nf4"].value("cuda", "?") << "\n";
}

void print_clients(std::ostream& os, const nlohmann::json& j) {
  os << std::left << std::setw(9) << "SESSION" << std::setw(9) << "PID" << std::setw(7) << "UID"
     << std::setw(17) << "COMMAND" << std::right << std::setw(8) << "LEASES" << std::setw(12)
     << "LEASED" << std::setw(9) << "PENDING"
     << "  TRANSPORT\n";
  for (const auto& c : j) {
    os << std::left << std::setw(9) << u64(c, "session") << std::setw(9) << c.value("pid", 0)
       << std::setw(7) << c.value("uid", 0) << std::setw(17) << c.value("comm", "") << std::right
       << std::setw(8) << u64(c, "leases") << std::setw(12) << human_bytes(u64(c, "leased_bytes"))
       << std::setw(9) << u64(c, "pending_puts") << "  " << c.value("transport", "socket") << "\n";
  }
}

void print_list(std::ostream& os, const nlohmann::json& j) {
  os << std::left << std::setw(34) << "KEY" << std::setw(6) << "TIER" << std::right << std::setw(11)
     << "BYTES" << std::setw(7) << "LEASES" << std::setw(7) << "HITS" << std::setw(5) << "PIN"
     << "  " << std::left << "NAMESPACE / TENSORS"
     << "\n";
  for (const auto& b : j) {
    os << std::left << std::setw(34) << b.value("key", "") << std::setw(6) << b.value("tier", "")
       << std::right << std::setw(11) << human_bytes(u64(b, "bytes")) << std::setw(7)
       << u64(b, "leases") << std::setw(7) << u64(b, "hits") << std::setw(5)
       << (b.value("pinned", false) ? "yes" : "-") << "  " << b.value("namespace", "");
    for (const auto& t : b.at("tensors")) {
      os << " " << t.value("name", "") << ":" << t.value("dtype", "") << "[";
      bool first = true;
      for (const auto& d : t.at("shape")) {
        os << (first ? "" : ",") << d.get<uint64_t>();
        first = false;
      }
      os << "]/" << t.value("codec", "");
    }
    os << "\n";
  }
}

}  // namespace kvtierctl
