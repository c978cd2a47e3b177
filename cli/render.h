// Human-readable tables for kvtierctl (the --json output is the daemon's document as is).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <ostream>
#include <string>

namespace kvtierctl {

std::string human_bytes(uint64_t bytes);
void print_stats(std::ostream& os, const nlohmann::json& j, bool tty);
void print_health(std::ostream& os, const nlohmann::json& j);
void print_clients(std::ostream& os, const nlohmann::json& j);
void print_list(std::ostream& os, const nlohmann::json& j);

}  // namespace kvtierctl
