#include "daemon/metrics_http.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <spdlog/spdlog.h>

#include <stdexcept>
#include <string_view>

#include "common/prometheus_text.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using tcp = asio::ip::tcp;

namespace kvtier {

MetricsHttp::MetricsHttp(const config::ListenAddress& listen, Render render)
    : acceptor_(io_), render_(std::move(render)) {
  const std::string where = "metrics.listen " + listen.address + ":" + std::to_string(listen.port);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(listen.address, ec);
  if (ec) throw std::runtime_error(where + ": " + ec.message());
  const tcp::endpoint endpoint(address, listen.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error(where + ": cannot listen: " + ec.message());
  port_ = acceptor_.local_endpoint().port();
  spdlog::info("metrics: GET /metrics on http://{}:{}/metrics",
               address.is_v6() ? "[" + listen.address + "]" : listen.address, port_);
}

MetricsHttp::~MetricsHttp() {
  stop();
}

void MetricsHttp::start() {
  asio::co_spawn(io_, accept_loop(), asio::detached);
  thread_ = std::thread([this] {
    try {
      io_.run();
    } catch (const std::exception& e) {  // a bug here must not take the daemon down
      spdlog::error("metrics: endpoint stopped: {}", e.what());
    }
  });
}

void MetricsHttp::stop() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
    io_.stop();  // connection coroutines are destroyed with io_
  });
  thread_.join();
}

awaitable<void> MetricsHttp::accept_loop() {
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      spdlog::warn("metrics: accept: {}", ec.message());
      asio::steady_timer t(io_, std::chrono::milliseconds(100));  // out of descriptors
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    if (open_ >= kMaxConnections) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      socket.close(ec);
      continue;
    }
    ++open_;
    asio::co_spawn(io_, serve(std::move(socket)), [this](std::exception_ptr e) {
      --open_;
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {  // e.g. no memory to render: only this scrape fails
        spdlog::warn("metrics: connection failed: {}", x.what());
      }
    });
  }
}

awaitable<void> MetricsHttp::serve(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer(kMaxHeaderBytes + kMaxBodyBytes);  // its size limit
  boost::system::error_code ec;
  for (bool first = true;; first = false) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(kMaxBodyBytes);
    stream.expires_after(first ? kIoTimeout : kIdleTimeout);
    co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
        ec == asio::error::eof)
      break;
    http::response<http::string_body> res;
    res.set(http::field::server, "kvtierd");
    bool keep_alive = false;
    if (ec) {
      // Unparsable, or past the header or body limit: say so and close.
      bad_requests_.fetch_add(1, std::memory_order_relaxed);
      res.result(http::status::bad_request);
      res.set(http::field::content_type, "text/plain; charset=utf-8");
      res.body() = ec.message() + "\n";
    } else {
      const auto& req = parser.get();
      std::string_view target(req.target().data(), req.target().size());
      target = target.substr(0, target.find('?'));
      res.version(req.version());
      keep_alive = req.keep_alive();
      if (req.method() == http::verb::get && target == "/metrics") {
        scrapes_.fetch_add(1, std::memory_order_relaxed);
        res.result(http::status::ok);
        res.set(http::field::content_type, std::string(PrometheusText::kContentType));
        res.body() = render_();
      } else {
        not_found_.fetch_add(1, std::memory_order_relaxed);
        res.result(http::status::not_found);
        res.set(http::field::content_type, "text/plain; charset=utf-8");
        res.body() = "not found: kvtierd serves GET /metrics only\n";
      }
    }
    res.keep_alive(keep_alive);
    res.prepare_payload();
    stream.expires_after(kIoTimeout);
    co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    if (res.result() == http::status::bad_request) {
      // A close with unread input sends a reset, which can destroy the answer before the peer
      // reads it: end our side, then read and drop what is still coming (bounded).
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
      stream.expires_after(kLingerTimeout);
      buffer.clear();
      for (size_t dropped = 0; dropped < kLingerBytes;) {
        const size_t n = co_await stream.async_read_some(buffer.prepare(kMaxHeaderBytes),
                                                         asio::redirect_error(use_awaitable, ec));
        if (ec) break;
        dropped += n;
      }
      break;
    }
    if (!keep_alive) break;
  }
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

void MetricsHttp::visit_counters(CounterVisitor& v) const {
  const Label ok[] = {{"code", "200"}}, not_found[] = {{"code", "404"}}, bad[] = {{"code", "400"}};
  const Metric answers{"kvtier_metrics_http_responses_total",
                       "answers of the GET /metrics endpoint, by status code"};
  v.counter(answers, ok, scrapes_.load(std::memory_order_relaxed));
  v.counter(answers, not_found, not_found_.load(std::memory_order_relaxed));
  v.counter(answers, bad, bad_requests_.load(std::memory_order_relaxed));
  v.counter({"kvtier_metrics_http_refused_total",
             "connections to the endpoint closed at once: too many open"},
            {}, refused_.load(std::memory_order_relaxed));
}

}  // namespace kvtier
