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

#include "daemon/admin.h"
#include "daemon/gpu_setup.h"
#include "daemon/session.h"
#include "tiers/disk/fault_device.h"

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

Server::Server(config::Config config)
    : config_(std::move(config)),
      instance_(random_instance()),
      started_unix_ms_(now_unix_ms()),
      ios_(make_contexts(config_.daemon.io_threads)),
      io_(*ios_[0]),
      acceptor_(io_),
      signals_(io_, SIGTERM, SIGINT),
      drain_timer_(io_),
      reader_timer_(io_),
      index_timer_(io_) {
  // Tests only: delay each periodic index save (requests must be served meanwhile).
  if (const char* d = std::getenv("KVTIER_TEST_INDEX_SAVE_DELAY_MS"); d && *d) {
    test_save_delay_ms_ = static_cast<uint32_t>(std::strtoul(d, nullptr, 10));
    spdlog::warn("KVTIER_TEST_INDEX_SAVE_DELAY_MS={}: index saves delayed (tests only)",
                 test_save_delay_ms_);
  }
  claim_names();
  // One host arena per isolation domain: the default one ([host]), then each [[arena]].
  std::vector<std::unique_ptr<HostTier>> hosts;
  for (size_t d = 0; d <= config_.arenas.size(); ++d) {
    HostTier::Options ho;
    ho.shm_name = d == 0 ? config_.daemon.shm_prefix + "-host-0"
                         : config_.daemon.shm_prefix + "-arena-" + config_.arenas[d - 1].name;
    ho.arena_id = static_cast<uint32_t>(d);
    ho.bytes = d == 0 ? config_.host.size_bytes : config_.arenas[d - 1].size_bytes;
    ho.prefault = config_.host.prefault;
    ho.small_ratio = config_.host.small_queue_ratio;
    ho.ghost_entries = d == 0 ? config_.host.ghost_entries : 0;
    auto host = HostTier::create(ho);
    if (!host) throw std::runtime_error("host tier: " + host.status().message());
    spdlog::info(
        "host tier{}: {} MiB in /dev/shm/{}{}, S3-FIFO eviction",
        d == 0 ? std::string() : " of isolation domain '" + config_.arenas[d - 1].name + "'",
        ho.bytes >> 20, ho.shm_name, ho.prefault ? " (prefaulted)" : "");
    hosts.push_back(std::move(host).value());
  }
  std::error_code ec;
  std::filesystem::create_directories(config_.daemon.state_dir, ec);
  if (ec)
    throw std::runtime_error("cannot create state directory " + config_.daemon.state_dir.string() +
                             ": " + ec.message());
  auto [disk, disk_status] = open_disk_tier();
  GpuSetup gpu = open_gpu_tier(config_, hosts);
  cache_ = std::make_unique<Cache>(config_, std::move(hosts), std::move(disk),
                                   std::move(disk_status), open_index(), metrics_, std::move(gpu));
  bind_socket();
}

Server::~Server() = default;

namespace {

// Tests only: KVTIER_TEST_DISK_FAULTS="op:kind:skip:count:probability[,...]" (op = read, write
// or sync; kind = error, short or nospace; count -1 = unlimited) puts the disk tier on a
// thread-pool device wrapped in the fault-injecting device of tiers/disk/fault_device.h.
Result<std::unique_ptr<Device>> fault_injecting_device(const DiskOptions& o, std::string spec) {
  auto plan = std::make_shared<FaultPlan>();
  std::stringstream rules(spec);
  for (std::string rule; std::getline(rules, rule, ',');) {
    std::stringstream fields(rule);
    std::string op, kind, skip, count, prob;
    std::getline(fields, op, ':');
    std::getline(fields, kind, ':');
    std::getline(fields, skip, ':');
    std::getline(fields, count, ':');
    std::getline(fields, prob, ':');
    FaultRule r;
    r.op = op == "read"   ? FaultRule::Op::kRead
           : op == "sync" ? FaultRule::Op::kSync
                          : FaultRule::Op::kWrite;
    r.kind = kind == "short"     ? FaultRule::Kind::kShort
             : kind == "nospace" ? FaultRule::Kind::kNoSpace
                                 : FaultRule::Kind::kError;
    try {
      r.skip = skip.empty() ? 0 : std::stoull(skip);
      r.count = count.empty() || count == "-1" ? UINT64_MAX : std::stoull(count);
      r.probability = prob.empty() ? 1.0 : std::stod(prob);
    } catch (const std::exception&) {
      return error(Errc::kInvalidArgument, "bad fault rule '" + rule + "'");
    }
    plan->add(r);
  }
  FileDeviceOptions fo;
  fo.dir = o.dir;
  fo.o_direct = o.o_direct;
  fo.threads = o.threads;
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  auto inner = make_thread_device(fo, "fault injection");
  if (!inner) return inner.status();
  spdlog::warn("disk tier: TEST FAULT INJECTION ACTIVE ({})", spec);
  return make_fault_device(std::move(inner).value(), plan);
}

}  // namespace

std::pair<std::unique_ptr<DiskTier>, std::string> Server::open_disk_tier() {
  if (!config_.disk.enabled) {
    spdlog::info("disk tier: disabled by configuration");
    return {nullptr, "disabled (disk.enabled = false)"};
  }
  DiskOptions o;
  o.dir = config_.disk_dir();
  o.capacity_bytes = config_.disk.size_bytes;
  o.region_bytes = config_.disk.region_bytes;
  o.write_queue_bytes = config_.disk.write_queue_bytes;
  o.backend = config_.disk.io_backend == "io_uring"  ? DiskOptions::Backend::kIoUring
              : config_.disk.io_backend == "threads" ? DiskOptions::Backend::kThreads
                                                     : DiskOptions::Backend::kAuto;
  o.o_direct = config_.disk.o_direct;
  o.threads = config_.disk.threads;
  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Device> device;
  if (const char* faults = std::getenv("KVTIER_TEST_DISK_FAULTS"); faults && *faults) {
    auto d = fault_injecting_device(o, faults);
    if (!d) return {nullptr, "test fault injection: " + d.status().to_string()};
    device = std::move(d).value();
  }
  auto disk = DiskTier::open(o, std::move(device));
  if (!disk) {
    // The daemon runs with what it has (DESIGN rule 8): host tier only, and says why.
    spdlog::error("disk tier unavailable, serving without it: {}", disk.status().to_string());
    return {nullptr, "failed to open: " + disk.status().to_string()};
  }
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  DiskUsage u = (*disk)->usage();
  spdlog::info("disk tier: {} blocks in {} ({} of {} MiB used), opened in {} ms, backend {}",
               u.blocks, o.dir.string(), u.used_bytes >> 20, o.capacity_bytes >> 20, ms,
               (*disk)->backend());
  if (u.dropped_at_open)
    spdlog::warn("disk tier: dropped {} entries of regions that were being written at a crash",
                 u.dropped_at_open);
  return {std::move(disk).value(), "open"};
}

std::unique_ptr<SemanticIndex> Server::open_index() {
  if (!config_.index.enabled) {
    spdlog::info("semantic index: disabled by configuration");
    return nullptr;
  }
  IndexOptions o;
  o.dir = config_.daemon.state_dir / "index";
  o.exact_max_vectors = config_.index.exact_max_vectors;
  o.nprobe = config_.index.nprobe;
  auto index = SemanticIndex::open(o);
  if (!index) {
    spdlog::error("semantic index unavailable, serving without it: {}", index.status().to_string());
    return nullptr;
  }
  spdlog::info("semantic index: {}", json_text((*index)->stats()));
  return std::move(index).value();
}

void Server::schedule_index_save() {
  if (cache_->index() == nullptr) return;
  index_timer_.expires_after(std::chrono::seconds(config_.index.save_interval_s));
  index_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    // The save runs on its own thread; the next interval starts when it is done.
    asio::post(index_saver_, [this] {
      if (test_save_delay_ms_ > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(test_save_delay_ms_));
      try {
        if (Status st = cache_->index()->save(); !st)
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
  if (cache_->disk() == nullptr) return;
  reader_timer_.expires_after(std::chrono::seconds(config_.disk.reader_check_s));
  reader_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    cache_->disk()->check_readers();
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
      std::lock_guard lock(sessions_mu_);
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
  std::lock_guard lock(sessions_mu_);
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
  std::lock_guard lock(sessions_mu_);
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

int Server::run() {
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
  signals_.async_wait([this](boost::system::error_code ec, int sig) {
    if (!ec) begin_drain(sig == SIGTERM ? "SIGTERM" : "SIGINT");
  });
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s\nMAINPID=%lu", config_.daemon.socket.c_str(),
             static_cast<unsigned long>(::getpid()));
  spdlog::info("kvtierd ready (pid {}, {} io threads)", ::getpid(), config_.daemon.io_threads);
  for (auto& io : ios_) work_.push_back(asio::make_work_guard(*io));
  std::vector<std::thread> threads;
  for (size_t i = 1; i < ios_.size(); ++i) threads.emplace_back([this, i] { run_io(*ios_[i]); });
  run_io(io_);
  stop_all();
  for (auto& t : threads) t.join();
  index_saver_.join();  // a periodic save in progress finishes first
  if (SemanticIndex* index = cache_->index())
    if (Status st = index->save(); !st)
      spdlog::warn("semantic index: save failed: {}", st.to_string());
  std::error_code ec;
  std::filesystem::remove(config_.daemon.socket, ec);
  spdlog::info("kvtierd stopped");
  return 0;
}

}  // namespace kvtier
