#include "cli/events.h"

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <chrono>
#include <iostream>
#include <vector>

#include "daemon/events/kv_events.h"

namespace kvtierctl {
namespace {

using kvtier::events::EventType;
using kvtier::events::KvEventBatch;

nlohmann::json hex_list(const std::vector<kvtier::BlockKey>& keys) {
  auto a = nlohmann::json::array();
  for (const auto& k : keys) a.push_back(k.hex());
  return a;
}

void print_batch(std::ostream& out, int64_t seq, const KvEventBatch& b, bool json,
                 uint64_t& printed, uint64_t count) {
  for (const auto& e : b.events) {
    if (count != 0 && printed >= count) return;
    ++printed;
    const char* type = kvtier::events::event_type_name(e.type);
    if (json) {
      nlohmann::json j = {{"seq", seq}, {"ts", b.ts}, {"type", type}};
      if (e.type != EventType::kCleared) {
        j["medium"] = kvtier::medium_name(e.medium);
        j["namespace"] = e.ns;
        j["block_hashes"] = hex_list(e.keys);
      }
      if (e.type == EventType::kStored)
        j["parent_block_hash"] = e.parent ? nlohmann::json(e.parent->hex()) : nlohmann::json();
      out << j.dump() << "\n";
    } else {
      out << seq << " " << type;
      if (e.type != EventType::kCleared) {
        out << " " << kvtier::medium_name(e.medium) << " " << e.ns;
        for (const auto& k : e.keys) out << " " << k.hex();
      }
      out << "\n";
    }
  }
  out.flush();
}

bool poll_in(zmq::socket_t& s, int timeout_ms) {
  zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
  return zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) > 0;
}

}  // namespace

std::string connect_endpoint(const std::string& bound) {
  for (const std::string wild : {"tcp://*:", "tcp://0.0.0.0:"})
    if (bound.rfind(wild, 0) == 0) return "tcp://127.0.0.1:" + bound.substr(wild.size());
  if (bound.rfind("tcp://[::]:", 0) == 0) return "tcp://[::1]:" + bound.substr(11);
  return bound;
}

int tail_events(const EventsOptions& o, std::ostream& out) {
  zmq::context_t ctx;
  // Subscribe before replaying: what is published meanwhile waits in the SUB queue, and the
  // batches the replay already printed are skipped by sequence number.
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect(connect_endpoint(o.endpoint));
  int64_t last = -1;  // the last sequence number printed
  uint64_t printed = 0;
  auto done = [&] { return o.count != 0 && printed >= o.count; };
  if (o.from) {
    // A DEALER framed as a REQ socket (empty delimiter first): a REQ socket takes only one
    // message per request, and a replay is one message per batch.
    zmq::socket_t req(ctx, zmq::socket_type::dealer);
    req.set(zmq::sockopt::linger, 0);
    req.connect(connect_endpoint(o.replay_endpoint));
    req.send(zmq::const_buffer("", 0), zmq::send_flags::sndmore);
    req.send(zmq::buffer(kvtier::events::encode_seq(*o.from)));
    for (;;) {
      if (!poll_in(req, 5000)) {
        std::cerr << "kvtierctl events: no answer from the replay endpoint " << o.replay_endpoint
                  << "\n";
        return 1;
      }
      std::vector<zmq::message_t> frames;
      (void)zmq::recv_multipart(req, std::back_inserter(frames));
      auto seq = frames.size() == 3 ? kvtier::events::decode_seq(frames[1].to_string_view())
                                    : std::nullopt;
      if (!seq) {
        std::cerr << "kvtierctl events: malformed replay message\n";
        return 1;
      }
      if (*seq == -1) break;
      auto b = kvtier::events::decode_batch(frames[2].to_string_view());
      if (!b) {
        std::cerr << "kvtierctl events: batch " << *seq << ": " << b.status().message() << "\n";
        return 1;
      }
      if (last < 0 && *seq > *o.from)
        std::cerr << "kvtierctl events: batches " << *o.from << ".." << *seq - 1
                  << " are no longer buffered\n";
      print_batch(out, *seq, *b, o.json, printed, o.count);
      last = *seq;
      if (done()) return 0;
    }
  }
  auto idle_since = std::chrono::steady_clock::now();
  for (;;) {
    if (!poll_in(sub, 100)) {
      if (o.idle_ms != 0 &&
          std::chrono::steady_clock::now() - idle_since > std::chrono::milliseconds(o.idle_ms))
        return 0;
      continue;
    }
    idle_since = std::chrono::steady_clock::now();
    std::vector<zmq::message_t> frames;
    (void)zmq::recv_multipart(sub, std::back_inserter(frames));
    auto seq =
        frames.size() == 3 ? kvtier::events::decode_seq(frames[1].to_string_view()) : std::nullopt;
    if (!seq) {
      std::cerr << "kvtierctl events: malformed message of " << frames.size() << " frames\n";
      return 1;
    }
    if (*seq <= last) continue;  // printed by the replay already
    if (last >= 0 && *seq != last + 1)
      std::cerr << "kvtierctl events: missed batches " << last + 1 << ".." << *seq - 1
                << " (ask with --from)\n";
    auto b = kvtier::events::decode_batch(frames[2].to_string_view());
    if (!b) {
      std::cerr << "kvtierctl events: batch " << *seq << ": " << b.status().message() << "\n";
      return 1;
    }
    print_batch(out, *seq, *b, o.json, printed, o.count);
    last = *seq;
    if (done()) return 0;
  }
}

}  // namespace kvtierctl
