#include "daemon/server.h"

#include <grp.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/prometheus_text.h"
#include "daemon/admin.h"
#include "daemon/session.h"

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using stream = asio::local::stream_protocol;

namespace kvtier {
namespace {

uint64_t now_unix_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::vector<std::unique_ptr<asio::io_context>> make_contexts(uint32_t n) {
  std::vector<std::unique_ptr<asio::io_context>> v;
  for (uint32_t i = 0; i < std::max<uint32_t>(n, 1); ++i)
    v.push_back(std::make_unique<asio::io_context>(1));  // concurrency hint: one thread
  return v;
}

BlockKey random_instance() {
  std::random_device rd;
  auto word = [&] { return (uint64_t(rd()) << 32) | rd(); };
  return BlockKey{word(), word()};
}

}  // namespace

Server::Server(config::Config config, ServerHooks hooks)
    : config_(std::move(config)),
      hooks_(std::move(hooks)),
      instance_(random_instance()),
      started_unix_ms_(now_unix_ms()),
      ios_(make_contexts(config_.daemon.io_threads)),
      io_(*ios_[0]),
      acceptor_(io_),
      signals_(io_, SIGTERM, SIGINT),
      drain_timer_(io_),
      reader_timer_(io_),
      index_timer_(io_),
      pin_timer_(io_) {
  claim_names();
  std::error_code ec;
  std::filesystem::create_directories(config_.daemon.state_dir, ec);
  if (ec)
    throw std::runtime_error("cannot create state directory " + config_.daemon.state_dir.string() +
                             ": " + ec.message());
  if (!config_.events.endpoint.empty())
    events_ = std::make_unique<events::Publisher>(config_.events);
  engine_ = Engine::open(config_, metrics_, hooks_.engine);
  engine_->open_lookup_index(instance_);  // before any client: docs/protocol.md "Lookup index"
  if (events_) announce_blocks();
  // Before the socket: a port in use fails the start before any client can connect.
  if (auto listen = config::parse_listen(config_.metrics.listen))  // validated: empty = off
    metrics_http_ = std::make_unique<MetricsHttp>(*listen, [this] { return metrics_text(); });
  bind_socket();
}

Server::~Server() {
  // The stores' last callbacks post to the io_contexts: run them out while those still exist.
  if (engine_) engine_->quiesce_stores();
  // Clients still mapping an index stop answering from it (they ask the daemon, which is gone).
  if (engine_) engine_->retire_lookup_index();
}

void Server::announce_blocks() {
  // Sequence numbers start again at 0 with this process: subscribers forget what an earlier
  // kvtierd told them, then learn what the disk tier recovered.
  events_->cleared();
  engine_->set_event_sink(events_.get());
  if (DiskTier* disk = engine_->disk()) {
    std::string ns;
    std::vector<BlockKey> keys;
    disk->visit([&](const DiskEntry& e) {
      if (e.ns != ns || keys.size() >= events::Publisher::kMaxKeysPerEvent) {
        if (!keys.empty()) events_->stored(ns, keys, Medium::kDisk);
        keys.clear();
        ns = e.ns;
      }
      keys.push_back(e.key);
    });
    if (!keys.empty()) events_->stored(ns, keys, Medium::kDisk);
  }
}

std::string Server::metrics_text() const {
  PrometheusText out;
  const Label version[] = {{"version", KVTIER_VERSION}};
  out.gauge({"kvtier_build_info", "the running kvtierd's version (the value is 1)"}, version, 1);
  out.gauge({"kvtier_start_time_seconds", "when kvtierd started, seconds since the Unix epoch"}, {},
            double(started_unix_ms_) / 1e3);
  out.gauge({"kvtier_draining", "1 once kvtierd is draining connections to stop"}, {},
            draining_ ? 1 : 0);
  engine_->visit_counters(out);
  if (metrics_http_) metrics_http_->visit_counters(out);
  return out.text();
}

void Server::schedule_index_save() {
  if (engine_->index() == nullptr) return;
  index_timer_.expires_after(std::chrono::seconds(config_.index.save_interval_s));
  index_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    // The save runs on its own thread; the next interval starts when it is done.
    asio::post(index_saver_, [this] {
      if (hooks_.index_save_delay_ms > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(hooks_.index_save_delay_ms));
      try {
        if (Status st = engine_->index()->save(); !st)
          spdlog::warn("semantic index: save failed: {}", st.to_string());
      } catch (const std::exception& e) {  // an exception here would end the saver thread
        spdlog::error("semantic index: save failed: {}", e.what());
      }
      asio::post(io_, [this] {
        if (!draining_) schedule_index_save();
      });
    });
  });
}

void Server::schedule_reader_check() {
  if (engine_->disk() == nullptr) return;
  reader_timer_.expires_after(std::chrono::seconds(config_.disk.reader_check_s));
  reader_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    engine_->disk()->check_readers();
    schedule_reader_check();
  });
}

namespace {

std::string holder_text(pid_t pid) {
  return pid > 0 ? "another kvtierd (pid " + std::to_string(pid) + ")" : "another kvtierd";
}

}  // namespace

void Server::claim_names() {
  // Shared-memory names live in one namespace per host, whatever the state directory: the
  // claim on a prefix is a lock file beside its objects.
  const std::filesystem::path shm_lock =
      std::filesystem::path("/dev/shm") / (config_.daemon.shm_prefix + ".lock");
  auto shm = InstanceLock::acquire(shm_lock);
  if (!shm && shm.status().code() == Errc::kAlreadyExists)
    throw std::runtime_error("daemon.shm_prefix '" + config_.daemon.shm_prefix + "' is in use by " +
                             holder_text(InstanceLock::holder(shm_lock)) + " (lock " +
                             shm_lock.string() + "): give this daemon another prefix");
  if (!shm) throw std::runtime_error("daemon.shm_prefix: " + shm.status().message());
  shm_lock_ = std::move(shm).value();

  const auto& path = config_.daemon.socket;
  std::error_code fec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), fec);
  std::filesystem::path sock_lock = path;
  sock_lock += ".lock";
  auto sock = InstanceLock::acquire(sock_lock);
  if (!sock && sock.status().code() == Errc::kAlreadyExists)
    throw std::runtime_error("daemon.socket " + path.string() + " is served by " +
                             holder_text(InstanceLock::holder(sock_lock)));
  if (!sock) throw std::runtime_error("daemon.socket: " + sock.status().message());
  socket_lock_ = std::move(sock).value();

  // The disk tier's region files and LMDB index take one writer: the state directory (and a
  // disk.dir outside it) is claimed too.
  auto claim_dir = [](const std::filesystem::path& dir, const std::string& key) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw std::runtime_error(key + ": cannot create " + dir.string() + ": " + ec.message());
    const std::filesystem::path lock = dir / "kvtierd.lock";
    auto l = InstanceLock::acquire(lock);
    if (!l && l.status().code() == Errc::kAlreadyExists)
      throw std::runtime_error(key + " " + dir.string() + " is in use by " +
                               holder_text(InstanceLock::holder(lock)));
    if (!l) throw std::runtime_error(key + ": " + l.status().message());
    return std::move(l).value();
  };
  dir_locks_.push_back(claim_dir(config_.daemon.state_dir, "daemon.state_dir"));
  const auto disk_dir = std::filesystem::weakly_canonical(config_.disk_dir());
  const auto state_dir = std::filesystem::weakly_canonical(config_.daemon.state_dir);
  const auto rel = disk_dir.lexically_relative(state_dir);
  if (config_.disk.enabled && (rel.empty() || *rel.begin() == ".."))
    dir_locks_.push_back(claim_dir(config_.disk_dir(), "disk.dir"));
  if (std::filesystem::exists(path)) {
    // No kvtierd holds the claim; a server of some other kind (or an older kvtierd) may still
    // answer on the path.  A stale socket file from a crash does not answer.
    stream::socket probe(io_);
    boost::system::error_code ec;
    probe.connect(stream::endpoint(path.string()), ec);
    if (!ec) {
      auto peer = peer_of(probe.native_handle());
      throw std::runtime_error("daemon.socket " + path.string() + " is served by " +
                               (peer ? "pid " + std::to_string(peer->pid) : "another process"));
    }
  }
}

void Server::bind_socket() {
  const auto& path = config_.daemon.socket;
  std::error_code fec;
  // A stale socket file from a crash: the claim above says nobody serves it.
  std::filesystem::remove(path, fec);
  acceptor_.open(stream());
  acceptor_.bind(stream::endpoint(path.string()));
  acceptor_.listen(asio::socket_base::max_listen_connections);
  mode_t mode = static_cast<mode_t>(std::stoul(config_.access.socket_mode, nullptr, 8));
  if (::chmod(path.c_str(), mode) != 0)
    throw std::runtime_error("chmod " + path.string() + ": " + std::strerror(errno));
  if (!config_.access.socket_group.empty()) {
    group* g = ::getgrnam(config_.access.socket_group.c_str());
    if (g == nullptr)
      throw std::runtime_error("unknown group '" + config_.access.socket_group + "'");
    if (::chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0)
      throw std::runtime_error("chown " + path.string() + ": " + std::strerror(errno));
  }
  spdlog::info("listening on {} (mode {})", path.string(), config_.access.socket_mode);
}

awaitable<void> Server::accept_loop() {
  for (;;) {
    boost::system::error_code ec;
    stream::socket sock = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      spdlog::warn("accept: {}", ec.message());
      // Out of descriptors or memory: back off instead of spinning.
      asio::steady_timer t(io_, std::chrono::milliseconds(100));
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    bump(metrics_.connections_total);
    auto peer = peer_of(sock.native_handle());
    if (!peer) {
      spdlog::warn("dropping connection: {}", peer.status().to_string());
      continue;
    }
    std::shared_ptr<Session> session;
    {
      MutexLock lock(sessions_mu_);
      if (sessions_.size() >= config_.daemon.max_connections) {
        bump(metrics_.connections_refused);
        spdlog::warn("refusing pid {}: {} connections open (daemon.max_connections)", peer->pid,
                     sessions_.size());
        continue;
      }
      // Move the connection onto the next io_context (round-robin).
      asio::io_context& target = *ios_[next_io_++ % ios_.size()];
      boost::system::error_code aec;
      stream::socket moved(target);
      moved.assign(stream(), sock.release(aec), aec);
      if (aec) {
        spdlog::warn("dropping connection: {}", aec.message());
        continue;
      }
      session = std::make_shared<Session>(*this, std::move(moved), std::move(peer).value());
      sessions_.emplace(session->id(), session);
    }
    asio::co_spawn(session->executor(), Session::run(session), asio::detached);
  }
}

void Server::on_session_end(uint64_t sid) {
  MutexLock lock(sessions_mu_);
  sessions_.erase(sid);
  if (draining_ && sessions_.empty()) stop_all();
}

void Server::begin_drain(const char* why) {
  if (draining_.exchange(true)) return;
  spdlog::info("{}: draining", why);
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  boost::system::error_code ec;
  acceptor_.close(ec);
  reader_timer_.cancel();
  index_timer_.cancel();
  pin_timer_.cancel();
  MutexLock lock(sessions_mu_);
  if (sessions_.empty()) {
    stop_all();
    return;
  }
  for (auto& [id, weak] : sessions_) {
    if (auto s = weak.lock()) asio::post(s->executor(), [s] { s->stop_reading(); });
  }
  drain_timer_.expires_after(std::chrono::milliseconds(config_.daemon.drain_timeout_ms));
  drain_timer_.async_wait([this](boost::system::error_code e) {
    if (e) return;
    spdlog::warn("drain timeout: closing remaining connections");
    stop_all();
  });
}

void Server::stop_all() {
  for (auto& io : ios_) io->stop();
}

void Server::stop() {
  asio::post(io_, [this] { begin_drain("stop requested"); });
}

void Server::run_io(asio::io_context& io) {
  const auto spin = std::chrono::microseconds(config_.daemon.busy_poll_us);
  if (spin.count() == 0) {
    io.run();
    return;
  }
  // A thread that sleeps between requests pays for it on the next one: the wake-up (an IPI,
  // ~20-40 us between vCPUs of these VMs) and caches that went cold while the vCPU idled
  // (+11 us on a 100k-vector search after a 50 us sleep).  Polling keeps the thread on its CPU
  // while requests keep coming; yield() lets anything else runnable there go first.
  auto last = std::chrono::steady_clock::now();
  while (!io.stopped()) {
    if (io.poll() > 0) {
      last = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last < spin) {
      std::this_thread::yield();
    } else {
      if (io.run_one() == 0) break;
      last = std::chrono::steady_clock::now();
    }
  }
}

void Server::schedule_pin_sweep() {
  pin_timer_.expires_after(std::chrono::seconds(1));
  pin_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || draining_) return;
    engine_->expire_pins(Engine::pin_clock_ms());
    schedule_pin_sweep();
  });
}

void Server::restore_pins() {
  // The disk tier recovered its index when it opened; the pinned blocks are read back from it
  // here, before the accept loop runs, so the first client already sees them pinned.  Clients
  // that connect meanwhile wait in the listen backlog.
  bool done = false;
  asio::co_spawn(io_, engine_->restore_pins(), [&done](std::exception_ptr e, uint32_t) {
    done = true;
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      spdlog::error("pins: restore failed: {}", x.what());
    }
  });
  while (!done && io_.run_one() > 0) {
  }
  io_.restart();
}

int Server::run() {
  restore_pins();
  asio::co_spawn(io_, accept_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      spdlog::critical("accept loop failed: {}", x.what());
    }
  });
  schedule_reader_check();
  schedule_index_save();
  schedule_pin_sweep();
  signals_.async_wait([this](boost::system::error_code ec, int sig) {
    if (!ec) begin_drain(sig == SIGTERM ? "SIGTERM" : "SIGINT");
  });
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%lu", config_.daemon.socket.c_str(),
             static_cast<unsigned long>(::getpid()));
  spdlog::info("kvtierd ready (pid {}, {} io threads)", ::getpid(), config_.daemon.io_threads);
  if (metrics_http_) metrics_http_->start();
  for (auto& io : ios_) work_.push_back(asio::make_work_guard(*io));
  std::vector<std::thread> threads;
  for (size_t i = 1; i < ios_.size(); ++i) threads.emplace_back([this, i] { run_io(*ios_[i]); });
  run_io(io_);
  stop_all();
  for (auto& t : threads) t.join();
  if (metrics_http_) metrics_http_->stop();
  index_saver_.join();  // a periodic save in progress finishes first
  if (SemanticIndex* index = engine_->index())
    if (Status st = index->save(); !st)
      spdlog::warn("semantic index: save failed: {}", st.to_string());
  std::error_code ec;
  std::filesystem::remove(config_.daemon.socket, ec);
  spdlog::info("kvtierd stopped");
  return 0;
}

}  // namespace kvtier
