// Key slots, the slot map's wire form (CLUSTER SLOTS) and redirect replies, as the Redis
// Cluster specification defines them.
#include <hiredis/hiredis.h>

#include <array>
#include <charconv>

#include "tiers/remote/cluster_impl.h"

namespace kvtier::redis {
namespace {

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection, no final xor.
constexpr std::array<uint16_t, 256> make_crc16_table() {
  std::array<uint16_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int bit = 0; bit < 8; ++bit)
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    t[i] = crc;
  }
  return t;
}
constexpr std::array<uint16_t, 256> kCrc16 = make_crc16_table();

constexpr uint16_t crc16(std::string_view bytes) {
  uint16_t crc = 0;
  for (const char ch : bytes)
    crc =
        static_cast<uint16_t>((crc << 8) ^ kCrc16[((crc >> 8) ^ static_cast<uint8_t>(ch)) & 0xff]);
  return crc;
}
static_assert(crc16("123456789") == 0x31C3, "the specification's check value");

template <typename T>
std::optional<T> parse_number(std::string_view s) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

// The hash tag is what lies between the first '{' and the first '}' after it, when that is
// not empty; otherwise the whole key is hashed.
uint16_t Cluster::slot_of(std::string_view key) {
  if (const size_t open = key.find('{'); open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1)
      key = key.substr(open + 1, close - open - 1);
  }
  return crc16(key) & (kSlots - 1);
}

Result<std::vector<SlotRange>> parse_cluster_slots(const redisReply& reply,
                                                   const std::string& queried_host) {
  const auto bad = [](const std::string& why) {
    return error(Errc::kProtocol, "CLUSTER SLOTS: " + why);
  };
  if (reply.type == REDIS_REPLY_ERROR) {
    const std::string text(reply.str, reply.len);
    // No password, or the wrong one: not a node to try again without new configuration.
    if (text.starts_with("NOAUTH") || text.starts_with("WRONGPASS"))
      return error(Errc::kPermissionDenied, "CLUSTER SLOTS: " + text);
    return bad(text);
  }
  if (reply.type != REDIS_REPLY_ARRAY) return bad("not an array");
  std::vector<SlotRange> out;
  for (size_t i = 0; i < reply.elements; ++i) {
    const redisReply* range = reply.element[i];
    // [first, last, [host, port, id, ...], replicas...]
    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) return bad("malformed range");
    const redisReply* first = range->element[0];
    const redisReply* last = range->element[1];
    const redisReply* master = range->element[2];
    if (first->type != REDIS_REPLY_INTEGER || last->type != REDIS_REPLY_INTEGER ||
        first->integer < 0 || last->integer < first->integer || last->integer >= kSlots)
      return bad("malformed slot range");
    if (master->type != REDIS_REPLY_ARRAY || master->elements < 2 ||
        master->element[0]->type != REDIS_REPLY_STRING ||
        master->element[1]->type != REDIS_REPLY_INTEGER)
      return bad("malformed node");
    std::string host(master->element[0]->str, master->element[0]->len);
    if (host.empty() || host == "?") host = queried_host;
    out.push_back({static_cast<uint16_t>(first->integer), static_cast<uint16_t>(last->integer),
                   host + ":" + std::to_string(master->element[1]->integer)});
  }
  return out;
}

std::optional<Redirect> parse_redirect(std::string_view error) {
  Redirect r;
  if (error.starts_with("MOVED ")) {
    error.remove_prefix(6);
  } else if (error.starts_with("ASK ")) {
    r.ask = true;
    error.remove_prefix(4);
  } else {
    return std::nullopt;
  }
  const size_t space = error.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  const std::optional<uint32_t> slot = parse_number<uint32_t>(error.substr(0, space));
  if (!slot || *slot >= kSlots) return std::nullopt;
  r.slot = static_cast<uint16_t>(*slot);
  r.address = std::string(error.substr(space + 1));
  if (r.address.empty()) return std::nullopt;
  return r;
}

std::pair<std::string, int> split_address(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return {address, 0};
  const std::optional<int> port = parse_number<int>(std::string_view(address).substr(colon + 1));
  if (!port || *port <= 0 || *port > 65535) return {address, 0};
  return {address.substr(0, colon), *port};
}

}  // namespace kvtier::redis
