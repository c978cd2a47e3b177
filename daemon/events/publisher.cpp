#include "daemon/events/publisher.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

namespace kvtier::events {
namespace {

double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

zmq::socket_t bind_socket(zmq::context_t& ctx, zmq::socket_type type, const std::string& endpoint,
                          const char* key, std::string& bound) {
  zmq::socket_t s(ctx, type);
  try {
    s.bind(endpoint);
  } catch (const zmq::error_t& e) {
    throw std::runtime_error(std::string("events.") + key + " = \"" + endpoint +
                             "\": cannot bind: " + e.what());
  }
  bound = s.get(zmq::sockopt::last_endpoint);
  return s;
}

}  // namespace

Publisher::Publisher(const config::EventsConfig& config)
    : max_batch_events_(std::max<uint32_t>(config.max_batch_events, 1)),
      batch_wait_(config.batch_ms),
      buffer_batches_(config.buffer_batches),
      queue_bound_(std::max<size_t>(65536, size_t(64) * max_batch_events_)) {
  // kvtierd is the stable end: it binds, routers connect (vLLM binds only for wildcard, ipc
  // and inproc endpoints; docs/events.md).
  pub_ = bind_socket(ctx_, zmq::socket_type::pub, config.endpoint, "endpoint", endpoint_);
  // Linger so that the last batches leave at shutdown; a slow subscriber costs at most this.
  pub_.set(zmq::sockopt::linger, 1000);
  if (!config.replay_endpoint.empty()) {
    replay_ = bind_socket(ctx_, zmq::socket_type::router, config.replay_endpoint, "replay_endpoint",
                          replay_endpoint_);
    replay_.set(zmq::sockopt::linger, 0);
    replay_.set(zmq::sockopt::sndhwm, 0);  // a replay is bounded by buffer_batches already
  }
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("events: eventfd failed");
  spdlog::info("events: publishing on {}{}", endpoint_,
               replay_endpoint_.empty() ? "" : ", replay on " + replay_endpoint_);
  thread_ = std::thread([this] { run(); });
}

Publisher::~Publisher() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  thread_.join();
  replay_.close();
  pub_.close();
  ::close(wake_fd_);
}

void Publisher::push(KvEvent e) {
  bool wake = false;
  {
    MutexLock lock(mu_);
    if (queue_.size() >= queue_bound_) {
      lost_ = true;
      events_dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (queue_.empty()) {
      first_queued_ = Clock::now();
      wake = true;  // the thread starts this batch's clock
    }
    if (lost_) {
      // What was dropped cannot be told any more: subscribers forget everything, and what
      // follows is exact again.
      queue_.push_back(KvEvent{EventType::kCleared, Medium::kCpu, {}, {}, {}, 0});
      lost_ = false;
    }
    queue_.push_back(std::move(e));
    wake |= queue_.size() == max_batch_events_;  // a full batch leaves at once
    queued_.store(queue_.size(), std::memory_order_relaxed);
  }
  if (wake) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);  // EAGAIN only when already signalled
  }
}

void Publisher::stored(std::string_view ns, std::span<const BlockKey> keys, Medium medium,
                       std::optional<BlockKey> parent) {
  for (size_t i = 0; i < keys.size(); i += kMaxKeysPerEvent) {
    auto part = keys.subspan(i, std::min(kMaxKeysPerEvent, keys.size() - i));
    // The parent of a later part is the last key of the part before it.
    std::optional<BlockKey> p = i == 0 ? parent : std::optional<BlockKey>(keys[i - 1]);
    push(KvEvent{EventType::kStored, medium, std::string(ns), {part.begin(), part.end()}, p, 0});
  }
}

void Publisher::removed(std::string_view ns, std::span<const BlockKey> keys, Medium medium) {
  for (size_t i = 0; i < keys.size(); i += kMaxKeysPerEvent) {
    auto part = keys.subspan(i, std::min(kMaxKeysPerEvent, keys.size() - i));
    push(KvEvent{EventType::kRemoved, medium, std::string(ns), {part.begin(), part.end()}, {}, 0});
  }
}

void Publisher::cleared() {
  push(KvEvent{EventType::kCleared, Medium::kCpu, {}, {}, {}, 0});
}

void Publisher::run() {
  for (;;) {
    int timeout_ms = -1;  // nothing queued: sleep until an event or a replay request
    bool stopping = false;
    {
      MutexLock lock(mu_);
      stopping = stop_;
      if (!queue_.empty()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            first_queued_ + batch_wait_ - Clock::now());
        timeout_ms = static_cast<int>(std::max<int64_t>(left.count(), 0));
      }
      if (stopping) timeout_ms = 0;
    }
    zmq::pollitem_t items[2] = {{nullptr, wake_fd_, ZMQ_POLLIN, 0},
                                {replay_ ? replay_.handle() : nullptr, 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, replay_ ? 2 : 1, std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) spdlog::warn("events: poll: {}", e.what());
    }
    if (items[0].revents & ZMQ_POLLIN) {
      uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof n);
    }
    if (replay_ && (items[1].revents & ZMQ_POLLIN)) serve_replays();
    // Every full batch, and a partial one whose time is up (or at shutdown, all of it).
    for (;;) {
      KvEventBatch b;
      {
        MutexLock lock(mu_);
        const bool due = !queue_.empty() && (queue_.size() >= max_batch_events_ || stop_ ||
                                             Clock::now() >= first_queued_ + batch_wait_);
        if (!due) break;
        const size_t n = std::min<size_t>(queue_.size(), max_batch_events_);
        b.events.assign(std::make_move_iterator(queue_.begin()),
                        std::make_move_iterator(queue_.begin() + n));
        queue_.erase(queue_.begin(), queue_.begin() + n);
        first_queued_ = Clock::now();  // what is left has waited already: it goes next round
        queued_.store(queue_.size(), std::memory_order_relaxed);
      }
      publish(b);
    }
    if (stopping) {
      MutexLock lock(mu_);
      if (queue_.empty()) return;
    }
  }
}

void Publisher::publish(KvEventBatch& b) {
  b.ts = unix_seconds();
  b.data_parallel_rank = 0;  // what a vLLM without data parallelism sends
  std::string payload = encode_batch(b);
  const int64_t seq = next_seq_++;
  const std::string seq_frame = encode_seq(seq);
  // Counted before sending: a subscriber that has the batch finds it counted.
  events_published_.fetch_add(b.events.size(), std::memory_order_relaxed);
  batches_published_.fetch_add(1, std::memory_order_relaxed);
  sequence_.store(static_cast<uint64_t>(seq) + 1, std::memory_order_relaxed);
  try {
    // vLLM's topic is "" by default; a PUB socket never blocks (past its HWM it drops).
    pub_.send(zmq::const_buffer("", 0), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    pub_.send(zmq::buffer(seq_frame), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    pub_.send(zmq::buffer(payload), zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    spdlog::warn("events: publishing batch {}: {}", seq, e.what());
  }
  if (buffer_batches_ == 0) return;
  ring_.emplace_back(seq, std::move(payload));
  while (ring_.size() > buffer_batches_) ring_.pop_front();
}

void Publisher::serve_replays() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    zmq::recv_result_t got;
    try {
      got = zmq::recv_multipart(replay_, std::back_inserter(frames), zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      spdlog::warn("events: replay request: {}", e.what());
      return;
    }
    if (!got) return;  // none left
    // A REQ client's request: identity, empty delimiter, start sequence (8 bytes, big-endian).
    if (frames.size() != 3 || frames[1].size() != 0) {
      spdlog::warn("events: replay request of {} frames ignored", frames.size());
      continue;
    }
    const auto start = decode_seq(frames[2].to_string_view());
    if (!start) {
      spdlog::warn("events: replay request without an 8-byte sequence number ignored");
      continue;
    }
    const std::string id = frames[0].to_string();
    auto send = [&](std::string_view seq, std::string_view payload) {
      replay_.send(zmq::buffer(id), zmq::send_flags::sndmore);
      replay_.send(zmq::const_buffer("", 0), zmq::send_flags::sndmore);
      replay_.send(zmq::buffer(seq), zmq::send_flags::sndmore);
      replay_.send(zmq::buffer(payload));
    };
    try {
      uint64_t n = 0;
      for (const auto& [seq, payload] : ring_)
        if (seq >= *start) {
          send(encode_seq(seq), payload);
          ++n;
        }
      // Counted before the end marker: a client that has it finds its replay counted.
      replays_served_.fetch_add(1, std::memory_order_relaxed);
      batches_replayed_.fetch_add(n, std::memory_order_relaxed);
      send(encode_seq(-1), {});  // the end of the replay
    } catch (const zmq::error_t& e) {
      spdlog::warn("events: replay: {}", e.what());
    }
  }
}

void Publisher::visit_counters(CounterVisitor& v) const {
  auto load = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  v.counter(
      {"kvtier_events_published_total", "KV events published (vLLM KVEventBatch)", "published"}, {},
      load(events_published_));
  v.counter({"kvtier_events_batches_total", "KV event batches published", "batches"}, {},
            load(batches_published_));
  v.counter({"kvtier_events_dropped_total",
             "KV events dropped because the publisher's queue was full", "dropped"},
            {}, load(events_dropped_));
  v.counter({"kvtier_events_replays_total", "replay requests answered", "replays"}, {},
            load(replays_served_));
  v.counter({"kvtier_events_replayed_batches_total", "batches sent again to replay requests",
             "replayed_batches"},
            {}, load(batches_replayed_));
  v.gauge({"kvtier_events_queued", "KV events waiting to be published", "queued"}, {},
          load(queued_));
  v.gauge({"kvtier_events_next_sequence", "the sequence number of the next batch", "next_sequence"},
          {}, load(sequence_));
}

}  // namespace kvtier::events
