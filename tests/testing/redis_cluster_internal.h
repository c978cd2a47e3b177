// Internal to the Redis Cluster fixture (redis_cluster.cpp, redis_cluster_ops.cpp).
#pragma once

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "tests/testing/redis_cluster.h"

namespace kvtier::testing::redis_fixture {

constexpr int kSlots = 16384;
constexpr const char* kHost = "127.0.0.1";

inline int port_of(const std::string& addr) {
  return std::stoi(addr.substr(addr.rfind(':') + 1));
}

// "field:value" from INFO / CLUSTER INFO text.
inline std::string info_field(const std::string& text, const std::string& field) {
  const size_t at = text.find(field + ":");
  if (at == std::string::npos) return "";
  const size_t from = at + field.size() + 1;
  return text.substr(from, text.find_first_of("\r\n", from) - from);
}

// A slot map as a comparable value: (first, last, master address) per range, sorted.
using SlotMap = std::vector<std::tuple<long long, long long, std::string>>;

inline SlotMap slot_map_of(const RedisValue& slots) {
  SlotMap m;
  for (const RedisValue& r : slots.elements) {
    if (r.elements.size() < 3 || r.elements[2].elements.size() < 2) continue;
    m.emplace_back(r.elements[0].integer, r.elements[1].integer,
                   std::string(kHost) + ":" + std::to_string(r.elements[2].elements[1].integer));
  }
  std::sort(m.begin(), m.end());
  return m;
}

inline long long covered(const SlotMap& m) {
  long long n = 0;
  for (const auto& [first, last, master] : m) n += last - first + 1;
  return n;
}

}  // namespace kvtier::testing::redis_fixture
