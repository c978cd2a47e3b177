// The publisher with real ZeroMQ sockets in-process: batching, contiguous sequence numbers,
// replay from a sequence number with its end marker, the queue bound.
#include <catch2/catch.hpp>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <map>

#include "daemon/events/publisher.h"

using namespace kvtier;
using namespace kvtier::events;

namespace {

// Every sample by family name (the publisher's have no labels).
struct CountingVisitor final : CounterVisitor {
  std::map<std::string, double> values;
  void counter(const Metric& m, Labels, Number v) override {
    values[std::string(m.name)] = v.value();
  }
  void gauge(const Metric& m, Labels, Number v) override {
    values[std::string(m.name)] = v.value();
  }
  void histogram(const Metric&, Labels, const HistogramData&) override {}
};

struct Received {
  int64_t seq = 0;
  KvEventBatch batch;
};

std::optional<Received> receive(zmq::socket_t& sub, int timeout_ms) {
  zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return std::nullopt;
  std::vector<zmq::message_t> frames;
  REQUIRE(zmq::recv_multipart(sub, std::back_inserter(frames)));
  REQUIRE(frames.size() == 3);
  CHECK(frames[0].size() == 0);  // vLLM's default topic ""
  auto seq = decode_seq(frames[1].to_string_view());
  REQUIRE(seq);
  auto b = decode_batch(frames[2].to_string_view());
  REQUIRE(b);
  return Received{*seq, std::move(*b)};
}

config::EventsConfig options(uint32_t max_batch_events, uint32_t batch_ms) {
  config::EventsConfig c;
  c.endpoint = "tcp://127.0.0.1:0";
  c.replay_endpoint = "tcp://127.0.0.1:0";
  c.buffer_batches = 100;
  c.max_batch_events = max_batch_events;
  c.batch_ms = batch_ms;
  return c;
}

// Subscribes and waits out ZeroMQ's slow joiner: AllBlocksCleared until one arrives.
zmq::socket_t subscribe(zmq::context_t& ctx, Publisher& p, int64_t& last_seq) {
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect(p.endpoint());
  for (int i = 0; i < 200; ++i) {
    p.cleared();
    if (auto r = receive(sub, 50)) {
      last_seq = r->seq;
      while (auto more = receive(sub, 100)) last_seq = more->seq;
      return sub;
    }
  }
  FAIL("the subscriber never received a batch");
  return sub;
}

}  // namespace

TEST_CASE("publisher: batches by size and time, numbers them, and replays from a sequence") {
  Publisher p(options(2, 500));  // batches by size; by time only the last one
  zmq::context_t ctx;
  int64_t seq0 = -1;
  zmq::socket_t sub = subscribe(ctx, p, seq0);

  const BlockKey a{1, 2}, b{3, 4}, c{5, 6};
  p.stored("ns", std::span(&a, 1), Medium::kCpu);
  p.stored("ns", std::span(&b, 1), Medium::kGpu);    // a full batch of 2
  p.removed("ns", std::span(&c, 1), Medium::kDisk);  // alone: leaves after batch_ms
  auto r1 = receive(sub, 2000);
  auto r2 = receive(sub, 2000);
  REQUIRE(r1);
  REQUIRE(r2);
  CHECK(r1->seq == seq0 + 1);
  CHECK(r2->seq == seq0 + 2);
  REQUIRE(r1->batch.events.size() == 2);
  CHECK(r1->batch.events[0].keys == std::vector<BlockKey>{a});
  CHECK(r1->batch.events[0].medium == Medium::kCpu);
  CHECK(r1->batch.events[1].medium == Medium::kGpu);
  REQUIRE(r2->batch.events.size() == 1);
  CHECK(r2->batch.events[0].type == EventType::kRemoved);
  CHECK(r2->batch.events[0].ns == "ns");
  CHECK(r2->batch.data_parallel_rank == 0);

  // A DEALER asks for everything from seq0 + 1 (empty delimiter, then the sequence, as a REQ
  // socket frames it): two batches, then the end marker.
  zmq::socket_t req(ctx, zmq::socket_type::dealer);
  req.connect(p.replay_endpoint());
  req.send(zmq::const_buffer("", 0), zmq::send_flags::sndmore);
  req.send(zmq::buffer(encode_seq(seq0 + 1)));
  std::vector<int64_t> seqs;
  for (;;) {
    zmq::pollitem_t item{req.handle(), 0, ZMQ_POLLIN, 0};
    REQUIRE(zmq::poll(&item, 1, std::chrono::milliseconds(2000)) == 1);
    std::vector<zmq::message_t> frames;
    REQUIRE(zmq::recv_multipart(req, std::back_inserter(frames)));
    REQUIRE(frames.size() == 3);
    CHECK(frames[0].size() == 0);
    auto seq = decode_seq(frames[1].to_string_view());
    REQUIRE(seq);
    if (*seq == -1) {
      CHECK(frames[2].size() == 0);
      break;
    }
    REQUIRE(decode_batch(frames[2].to_string_view()));
    seqs.push_back(*seq);
  }
  CHECK(seqs == std::vector<int64_t>{seq0 + 1, seq0 + 2});

  CountingVisitor v;
  p.visit_counters(v);
  CHECK(v.values["kvtier_events_replays_total"] == 1);
  CHECK(v.values["kvtier_events_replayed_batches_total"] == 2);
  CHECK(v.values["kvtier_events_next_sequence"] == seq0 + 3);
}

TEST_CASE("publisher: a large change is split into events of kMaxKeysPerEvent hashes") {
  Publisher p(options(1024, 5));
  zmq::context_t ctx;
  int64_t seq0 = -1;
  zmq::socket_t sub = subscribe(ctx, p, seq0);
  std::vector<BlockKey> keys(Publisher::kMaxKeysPerEvent + 3);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = BlockKey{i, 7};
  p.stored("big", keys, Medium::kDisk);
  auto r = receive(sub, 2000);
  REQUIRE(r);
  REQUIRE(r->batch.events.size() == 2);
  CHECK(r->batch.events[0].keys.size() == Publisher::kMaxKeysPerEvent);
  CHECK(r->batch.events[1].keys.size() == 3);
  CHECK(r->batch.events[1].parent == keys[Publisher::kMaxKeysPerEvent - 1]);
}
