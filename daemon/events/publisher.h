// kvtierd's KV event publisher (docs/events.md): the BlockEventSink the engine reports to,
// and the thread that batches the events, encodes them as vLLM's KVEventBatch
// (daemon/events/kv_events.h) and publishes them on a ZeroMQ PUB socket with sequence numbers,
// keeping the last `buffer_batches` for replay on a ROUTER socket.
//
// Threads: the engine's (any thread, often holding its mutex) only append to the queue under
// mu_ and write an eventfd when the publisher thread must wake; the publisher thread alone
// touches the sockets, the replay buffer and the sequence number.  Lock order: mu_ is a leaf.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <utility>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/mutex.h"
#include "config/config.h"
#include "daemon/events/kv_events.h"
#include "engine/block_events.h"

namespace kvtier::events {

class Publisher final : public BlockEventSink {
 public:
  // Binds the PUB socket (and the ROUTER one when replay_endpoint is set) and starts the
  // thread.  Throws std::runtime_error naming the endpoint when one cannot be bound.
  explicit Publisher(const config::EventsConfig& config);
  // Publishes what is queued, then closes the sockets (waiting up to 1 s for subscribers to
  // take the last batches).
  ~Publisher() override;
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  void stored(std::string_view ns, std::span<const BlockKey> keys, Medium medium,
              std::optional<BlockKey> parent = std::nullopt) override;
  void removed(std::string_view ns, std::span<const BlockKey> keys, Medium medium) override;
  void cleared() override;
  void visit_counters(CounterVisitor& v) const override;

  // The endpoints as bound ("tcp://127.0.0.1:40123" for a configured port 0); replay "" = none.
  const std::string& endpoint() const { return endpoint_; }
  const std::string& replay_endpoint() const { return replay_endpoint_; }

  // Events queued at most; past it they are dropped (counted) and an AllBlocksCleared takes
  // their place, so a subscriber forgets what it can no longer trust.
  size_t queue_bound() const { return queue_bound_; }
  // Block hashes in one event at most: a larger change is split into several events.
  static constexpr size_t kMaxKeysPerEvent = 4096;

 private:
  using Clock = std::chrono::steady_clock;
  void push(KvEvent e);
  void run();                     // the publisher thread
  void publish(KvEventBatch& b);  // encode, send, keep for replay
  void serve_replays();

  // Constant after construction.
  const uint32_t max_batch_events_;
  const std::chrono::milliseconds batch_wait_;
  const uint64_t buffer_batches_;
  const size_t queue_bound_;
  std::string endpoint_, replay_endpoint_;
  int wake_fd_ = -1;  // eventfd: the publisher thread polls it beside the ROUTER socket

  // The publisher thread's alone (after construction).
  zmq::context_t ctx_{1};
  zmq::socket_t pub_;
  zmq::socket_t replay_;  // invalid without replay_endpoint
  int64_t next_seq_ = 0;
  std::deque<std::pair<int64_t, std::string>> ring_;  // (seq, payload), oldest first

  mutable Mutex mu_;
  std::deque<KvEvent> queue_ GUARDED_BY(mu_);
  Clock::time_point first_queued_ GUARDED_BY(mu_);  // when queue_ last became non-empty
  bool lost_ GUARDED_BY(mu_) = false;               // events dropped, no AllBlocksCleared yet
  bool stop_ GUARDED_BY(mu_) = false;

  // Counters (read by visit_counters from any thread).
  std::atomic<uint64_t> events_published_{0}, batches_published_{0}, events_dropped_{0},
      replays_served_{0}, batches_replayed_{0}, queued_{0}, sequence_{0};

  std::thread thread_;  // last: started once everything above is in place
};

}  // namespace kvtier::events
