// kvtierd's control plane: a Boost.Asio server on a Unix socket, one coroutine per connection
// (docs/internals.md).  SIGTERM/SIGINT drain: stop accepting, let each connection finish the
// request in flight, release what it held, then stop.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kvtier/keys.h"
#include "config/config.h"
#include "engine/engine.h"
#include "daemon/events/publisher.h"
#include "daemon/instance_lock.h"
#include "daemon/metrics_http.h"
#include "engine/metrics.h"

namespace kvtier {

class Session;

// What the test build of kvtierd (tests/testing/kvtierd_test_main.cpp) injects; the product
// passes none.
struct ServerHooks {
  EngineHooks engine;
  uint32_t index_save_delay_ms = 0;  // each periodic index save sleeps this long first
};

class Server {
 public:
  // Creates the host tier and binds the socket; throws std::runtime_error with a clear
  // message when either fails (construction is where exceptions are allowed).
  explicit Server(config::Config config, ServerHooks hooks = {});
  ~Server();

  // Runs until drained by a signal or stop(); returns the process exit code.
  int run();
  void stop();

  Engine& engine() { return *engine_; }
  Metrics& metrics() { return metrics_; }
  const config::Config& config() const { return config_; }
  const BlockKey& instance() const { return instance_; }
  uint64_t started_unix_ms() const { return started_unix_ms_; }
  const char* state() const { return draining_ ? "draining" : "serving"; }

  void on_session_end(uint64_t sid);

  // The Prometheus text exposition of every counter (GET /metrics): the daemon's own
  // (kvtier_build_info, kvtier_start_time_seconds), the engine's parts, and the endpoint's.
  // Thread-safe.
  std::string metrics_text() const;

 private:
  boost::asio::awaitable<void> accept_loop();
  void begin_drain(const char* why);
  // Claims daemon.shm_prefix, daemon.socket and daemon.state_dir (and disk.dir) for this
  // process (instance locks) before any shared-memory name, socket file or disk tier file is
  // touched; throws naming the key and the holder's pid.
  void claim_names();
  // KV events: hands the publisher to the engine and announces the blocks the disk tier
  // recovered (docs/events.md, "Start").
  void announce_blocks();
  void bind_socket();
  void schedule_reader_check();  // mdb_reader_check every disk.reader_check_s
  void schedule_index_save();    // every index.save_interval_s
  void schedule_pin_sweep();     // drops expired pins every second (docs/operations.md "Pins")
  // Re-pins the durable namespaces' recorded pins on io_[0] before the daemon serves.
  void restore_pins();
  // Runs one io_context until it stops; with daemon.busy_poll_us it polls for that long after
  // its last handler before sleeping in epoll_wait (docs/operations.md, "Busy polling").
  void run_io(boost::asio::io_context& io);

  // Constant after construction.
  const config::Config config_;
  const ServerHooks hooks_;
  BlockKey instance_;
  uint64_t started_unix_ms_ = 0;

  // Held from the start until after engine_ (and the host arena's name) is gone: declared
  // before engine_ so that they are destroyed after it.
  InstanceLock shm_lock_;
  InstanceLock socket_lock_;
  std::vector<InstanceLock> dir_locks_;  // daemon.state_dir, and disk.dir when outside it
  Metrics metrics_;
  // KV events when [events] endpoint is set (else null): declared before engine_, which
  // reports to it, so that it outlives the engine (and publishes its last events).
  std::unique_ptr<events::Publisher> events_;
  std::unique_ptr<Engine> engine_;
  // One io_context per io thread, each run by exactly one thread; connections are dealt out
  // round-robin and stay on theirs, so a request never hops threads (a cross-vCPU wake costs
  // ~40 us here).  io_[0] also runs the acceptor, signals and timers.
  std::vector<std::unique_ptr<boost::asio::io_context>> ios_;
  boost::asio::io_context& io_;
  std::vector<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  size_t next_io_ = 0;  // accept loop only
  void stop_all();
  boost::asio::local::stream_protocol::acceptor acceptor_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer drain_timer_;
  boost::asio::steady_timer reader_timer_;
  boost::asio::steady_timer index_timer_;
  boost::asio::steady_timer pin_timer_;
  // The periodic index save runs here, not on io_[0]: writing a 100k-vector index takes tens
  // of ms (1M: ~0.5 GB), which stalled every session on that thread.
  boost::asio::thread_pool index_saver_{1};
  std::atomic<bool> draining_{false};

  Mutex sessions_mu_;
  // Live sessions, for draining.
  std::map<uint64_t, std::weak_ptr<Session>> sessions_ GUARDED_BY(sessions_mu_);

  // GET /metrics when [metrics] listen is set (else null).  Declared after engine_ so that it
  // stops (and its thread, which reads the engine, is joined) before the engine goes.
  std::unique_ptr<MetricsHttp> metrics_http_;
};

}  // namespace kvtier
