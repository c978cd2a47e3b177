// kvtierctl compact / verify: long disk tier jobs that report progress over the socket.
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <mutex>
#include <thread>

#include "common/frame.h"
#include "common/wire.h"
#include "daemon/admin.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace asio = boost::asio;
using asio::awaitable;

namespace kvtier {
namespace {

// Shared between the job's thread and the connection's coroutine.
struct Job {
  Mutex mu;
  DiskTier::Progress progress GUARDED_BY(mu);
  bool done GUARDED_BY(mu) = false;
  nlohmann::json report GUARDED_BY(mu);
  Status status GUARDED_BY(mu);
};

void run_job(Job& job, DiskTier& disk, bool compact) {
  auto on_progress = [&job](DiskTier::Progress p) {
    MutexLock lock(job.mu);
    job.progress = p;
  };
  nlohmann::json report;
  Status status;
  if (compact) {
    auto c = disk.compact(on_progress);
    if (c) {
      report = {{"job", "compact"},
                {"moved", c->moved},
                {"regions_freed", c->regions_freed},
                {"bytes_freed", c->bytes_freed}};
    } else {
      status = c.status();
    }
  } else {
    auto v = disk.verify(on_progress);
    if (v) {
      report = {{"job", "verify"}, {"checked", v->checked}, {"corrupt", v->corrupt}};
    } else {
      status = v.status();
    }
  }
  MutexLock lock(job.mu);
  job.done = true;
  job.report = std::move(report);
  job.status = std::move(status);
}

}  // namespace

awaitable<bool> Session::send_progress(uint64_t request_id, uint64_t done, uint64_t total) {
  Reply p;
  p.set(wire::Response::ProgressResp, wire::CreateProgressResp(p.fbb, done, total));
  co_return co_await send(request_id, p);
}

awaitable<void> Session::on_disk_job(const wire::RequestMsg& msg, Reply& r) {
  const bool compact = msg.body_type() == wire::Request::CompactReq;
  if (!is_admin(server_, peer_)) {
    bump(server_.metrics().permission_denied);
    co_return r.fail(error(Errc::kPermissionDenied, std::string("'") +
                                                        (compact ? "compact" : "verify") +
                                                        "' needs an admin uid or group (uid " +
                                                        std::to_string(peer_.uid) + ")"));
  }
  DiskTier* disk = server_.engine().disk();
  if (disk == nullptr)
    co_return r.fail(error(Errc::kUnavailable, "no disk tier: " + server_.engine().disk_status()));
  spdlog::info("session {}: {} started", id_, compact ? "compact" : "verify");
  auto job = std::make_shared<Job>();
  // jthread: should this frame be destroyed early (shutdown), it joins before the disk tier goes.
  std::jthread worker([job, disk, compact] { run_job(*job, *disk, compact); });
  asio::steady_timer tick(socket_.get_executor());
  DiskTier::Progress last{~0ull, ~0ull};
  auto last_sent = std::chrono::steady_clock::now();
  bool client_gone = false;
  for (;;) {
    bool done;
    DiskTier::Progress p;
    {
      MutexLock lock(job->mu);
      done = job->done;
      p = job->progress;
    }
    if (done) break;
    // On change, and every 2 s regardless so the client's read timeout never fires.
    const auto now = std::chrono::steady_clock::now();
    if (!client_gone && (p.done != last.done || p.total != last.total ||
                         now - last_sent > std::chrono::seconds(2))) {
      client_gone = !co_await send_progress(msg.id(), p.done, p.total);
      last = p;
      last_sent = now;
    }
    tick.expires_after(std::chrono::milliseconds(100));
    boost::system::error_code ec;
    co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  worker.join();
  MutexLock lock(job->mu);
  spdlog::info("session {}: {} finished: {}", id_, compact ? "compact" : "verify",
               job->status.is_ok() ? json_text(job->report) : job->status.to_string());
  if (!job->status) co_return r.fail(job->status);
  r.set(wire::Response::TextResp,
        wire::CreateTextResp(r.fbb, r.fbb.CreateString(json_text(job->report))));
}

}  // namespace kvtier
