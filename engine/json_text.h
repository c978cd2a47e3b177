// Every JSON document the engine and the daemon send or log.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace kvtier {

// Never throws, whatever bytes a name holds (invalid UTF-8, e.g. a disk entry written before
// names were checked, or a client's comm, comes out as U+FFFD).
inline std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kvtier
