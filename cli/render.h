// Human-readable tables for kvtierctl (the --json output is the daemon's document as is).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>

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

}  // namespace kvtierctl
