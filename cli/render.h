// Human-readable tables for kvtierctl (the --json output is the daemon's document as is).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "kvtier/client.h"

namespace kvtierctl {

std::string human_bytes(uint64_t bytes);

// A progress bar on stderr when it is a terminal; silent otherwise.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled) : label_(std::move(label)), enabled_(enabled) {}
  std::function<void(uint64_t, uint64_t)> callback();
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
};
void print_stats(std::ostream& os, const nlohmann::json& j, bool tty);
void print_health(std::ostream& os, const nlohmann::json& j);
void print_clients(std::ostream& os, const nlohmann::json& j);
void print_list(std::ostream& os, const nlohmann::json& j);

// "vision=0.1,0.2" / "vision=@file" plus "vision=0.8" thresholds and weights.
kvtier::Result<std::vector<kvtier::SearchQuery>> parse_queries(
    const std::vector<std::string>& queries, const std::vector<std::string>& thresholds,
    const std::vector<std::string>& weights);
void print_search(std::ostream& os, const std::vector<kvtier::SearchQuery>& queries,
                  const kvtier::SearchResult& result, bool json);

}  // namespace kvtierctl
