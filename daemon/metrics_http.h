// GET /metrics for Prometheus ([metrics] listen): the counters of every part of kvtierd
// (Engine::visit_counters) in the text exposition format 0.0.4, over HTTP/1.1 with
// Boost.Beast.
//
// It runs on a thread and an io_context of its own, so a slow or dead scraper never holds an
// io thread that serves clients; a scrape reads atomics and takes the engine's lock briefly,
// as `kvtierctl stats` does.  Everything a peer can make it hold is bounded: at most
// kMaxConnections connections (more are closed when accepted), kMaxHeaderBytes of request
// header and kMaxBodyBytes of body, kIoTimeout to send a request or take a reply,
// kIdleTimeout between the requests of a kept-alive connection, kLingerTimeout/kLingerBytes
// to drain a refused request.  The endpoint has no
// authentication: it is meant for loopback or a trusted network.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "common/counters.h"
#include "config/config.h"

namespace kvtier {

class MetricsHttp {
 public:
  static constexpr size_t kMaxConnections = 16;
  static constexpr size_t kMaxHeaderBytes = 8 * 1024;
  static constexpr size_t kMaxBodyBytes = 4 * 1024;
  static constexpr std::chrono::seconds kIoTimeout{10};
  static constexpr std::chrono::seconds kIdleTimeout{30};
  // After a 400: how long, and how many bytes, the rest of a bad request is read and dropped.
  static constexpr std::chrono::seconds kLingerTimeout{2};
  static constexpr size_t kLingerBytes = 1 << 20;

  // The exposition's text, rendered on the endpoint's thread for each scrape.
  using Render = std::function<std::string()>;

  // Binds and listens on `listen` (connections wait in the backlog until start()); throws
  // std::runtime_error naming metrics.listen when it cannot.
  MetricsHttp(const config::ListenAddress& listen, Render render);
  ~MetricsHttp();  // stop()
  MetricsHttp(const MetricsHttp&) = delete;
  MetricsHttp& operator=(const MetricsHttp&) = delete;

  void start();  // starts the endpoint's thread
  // Closes the listener and every connection and joins the thread; idempotent.  Not from the
  // endpoint's own thread.
  void stop();
  uint16_t port() const { return port_; }

  // kvtier_metrics_http_*: what the endpoint answered.
  void visit_counters(CounterVisitor& v) const;

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);

  boost::asio::io_context io_{1};
  boost::asio::ip::tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  const Render render_;
  std::thread thread_;
  size_t open_ = 0;  // connections being served; the endpoint's thread only

  std::atomic<uint64_t> scrapes_{0};       // 200 answers
  std::atomic<uint64_t> not_found_{0};     // 404 answers
  std::atomic<uint64_t> bad_requests_{0};  // unparsable or oversized: 400, then closed
  std::atomic<uint64_t> refused_{0};       // closed at accept: kMaxConnections open
};

}  // namespace kvtier
