#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "common/mutex.h"
#include "common/frame.h"
#include "common/wire.h"
#include "libclient/src/impl.h"
#include "tiers/gpu/cuda_import.h"

namespace kvtier {
namespace {

// Process-wide: (daemon instance, arena id) -> mapping, so each arena is mapped once.  GPU
// pools are keyed with kGpuPoolKey set in the id.
Mutex g_arenas_mu;
std::map<std::pair<BlockKey, uint64_t>, std::weak_ptr<ArenaMapping>> g_arenas;
constexpr uint64_t kGpuPoolKey = 1ull << 32;

}  // namespace

ArenaMapping::~ArenaMapping() {
  {
    MutexLock lock(events_mu);
    for (void* e : events)
      if (e != nullptr) gpu::close_ipc_event(e);
  }
  if (base != nullptr && pool == nullptr) ::munmap(const_cast<std::byte*>(base), size);
}

Status ArenaMapping::wait_event(uint32_t n, void* stream) {
  if (n == 0 || event_handles.empty()) return {};
  if (n > event_handles.size())
    return error(Errc::kProtocol, "ready event " + std::to_string(n) + " of a pool with " +
                                      std::to_string(event_handles.size()));
  void* e = nullptr;
  {
    MutexLock lock(events_mu);
    events.resize(event_handles.size(), nullptr);
    if (events[n - 1] == nullptr) {
      auto opened = gpu::open_ipc_event(event_handles[n - 1], device);
      if (!opened) return opened.status();
      events[n - 1] = *opened;
    }
    e = events[n - 1];
  }
  return gpu::wait_ipc_event(e, stream);
}

Response::~Response() {
  for (int fd : fds) ::close(fd);
}

int Response::take_fd() {
  if (fds.empty()) return -1;
  int fd = fds.front();
  fds.erase(fds.begin());
  return fd;
}

Client::Impl::~Impl() {
  if (staging != nullptr) ::munmap(staging, staging_bytes);
  if (fd >= 0) ::close(fd);
  for (int f : rfds) ::close(f);
}

Result<std::unique_ptr<Response>> Client::Impl::call(flatbuffers::FlatBufferBuilder& fbb,
                                                     wire::Request type,
                                                     flatbuffers::Offset<void> body) {
  return call(fbb, type, body, {});
}

Result<std::unique_ptr<Response>> Client::Impl::call(
    flatbuffers::FlatBufferBuilder& fbb, wire::Request type, flatbuffers::Offset<void> body,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  if (fd < 0) return error(Errc::kUnavailable, "not connected");
  const uint64_t id = next_id++;
  // Releases waiting for a request ride on this one (the daemon handles them first).
  std::vector<uint64_t> releases;
  {
    MutexLock lock(release_mu);
    releases.swap(pending_releases);
  }
  flatbuffers::Offset<flatbuffers::Vector<uint64_t>> rel;
  if (!releases.empty()) rel = fbb.CreateVector(releases);
  fbb.Finish(wire::CreateRequestMsg(fbb, id, type, body, rel));
  auto bytes = wire_util::bytes_of(fbb);
  if (max_message_bytes && bytes.size() > max_message_bytes) {
    if (!releases.empty()) (void)post_releases(std::move(releases));
    return error(Errc::kLimit, "request of " + std::to_string(bytes.size()) +
                                   " bytes exceeds the daemon's limit of " +
                                   std::to_string(max_message_bytes));
  }
  if (channel && bytes.size() <= channel->request_capacity()) {
    auto resp = call_on_channel(id, bytes);
    if (!resp || *resp != nullptr) return resp;
    // The daemon sends this reply on the socket (descriptors, size, progress frames).
  } else {
    if (channel) {
      // Too big for the channel: a marker tells a polling daemon to read the socket now.
      channel->control().request_len.store(kChannelOnSocket, std::memory_order_relaxed);
      channel->control().request_seq.store(id, std::memory_order_seq_cst);
    }
    auto header =
        encode_header({kProtocolVersion, FrameKind::kRequest, static_cast<uint32_t>(bytes.size())});
    if (Status st = send_all(fd, header, bytes); !st) return fail_connection(st);
  }
  for (;;) {
    auto resp = receive(id);
    if (!resp) return resp;
    const auto* p = (*resp)->msg->body_as_ProgressResp();
    if (p == nullptr) return resp;
    if (progress) progress(p->done(), p->total());
  }
}

Status Client::Impl::post_releases(std::vector<uint64_t> ids) {
  {
    MutexLock lock(release_mu);
    ids.insert(ids.end(), pending_releases.begin(), pending_releases.end());
    pending_releases.clear();
  }
  if (ids.empty() || fd < 0) return {};  // a closed connection released everything
  flatbuffers::FlatBufferBuilder fbb(64 + ids.size() * 8);
  auto req = wire::CreateReleaseReq(fbb, fbb.CreateVector(ids));
  fbb.Finish(wire::CreateRequestMsg(fbb, next_id++, wire::Request::ReleaseReq, req.Union(), 0,
                                    /*oneway=*/true));
  auto bytes = wire_util::bytes_of(fbb);
  auto header =
      encode_header({kProtocolVersion, FrameKind::kRequest, static_cast<uint32_t>(bytes.size())});
  // On the socket even with a request channel: the daemon reads it when it next reads the
  // socket, and nothing waits for it.
  if (Status st = send_all(fd, header, bytes); !st) (void)fail_connection(st);
  return {};
}

Status Client::Impl::release_leases(std::vector<uint64_t> ids) {
  if (ids.empty()) return {};
  if (release_mode == ReleaseMode::kDeferred) {
    {
      MutexLock lock(release_mu);
      pending_releases.insert(pending_releases.end(), ids.begin(), ids.end());
      if (pending_releases.size() < kMaxPendingReleases) return {};
    }
    MutexLock lock(mu);
    return post_releases({});
  }
  MutexLock lock(mu);
  if (release_mode == ReleaseMode::kPosted) return post_releases(std::move(ids));
  flatbuffers::FlatBufferBuilder fbb(64 + ids.size() * 8);
  auto req = wire::CreateReleaseReq(fbb, fbb.CreateVector(ids));
  auto resp = call(fbb, wire::Request::ReleaseReq, req.Union());
  // A dead connection has released everything on the daemon's side already.
  if (!resp && resp.status().code() == Errc::kUnavailable) return {};
  return resp.status();
}

Status Client::Impl::fail_connection(Status st) {
  ::close(fd);
  fd = -1;
  rbeg = rend = 0;
  for (int f : rfds) ::close(f);
  rfds.clear();
  channel.reset();
  return st;
}

Status Client::Impl::read_some(int flags) {
  constexpr size_t kBufferBytes = 64 * 1024;
  if (rbuf.size() < kBufferBytes) rbuf.resize(kBufferBytes);
  if (rbeg > 0) {
    std::memmove(rbuf.data(), rbuf.data() + rbeg, rend - rbeg);
    rend -= rbeg;
    rbeg = 0;
  }
  auto n = recv_some(fd, std::span(rbuf).subspan(rend), rfds, flags);
  if (!n) return fail_connection(n.status());
  // Nothing yet (MSG_DONTWAIT): let whatever else can run on this CPU (the daemon itself, when
  // both share one) go first.
  if (*n == 0) std::this_thread::yield();
  rend += *n;
  return {};
}

Result<std::unique_ptr<Response>> Client::Impl::receive(uint64_t id) {
  std::chrono::steady_clock::time_point poll_until;
  if (busy_poll_us > 0 && rend - rbeg < kFrameHeaderBytes)
    poll_until = std::chrono::steady_clock::now() + std::chrono::microseconds(busy_poll_us);
  std::optional<FrameHeader> h;
  while (!h) {
    while (rend - rbeg < kFrameHeaderBytes) {
      // Polling (ClientOptions::busy_poll_us) until the reply starts or the time is up.
      const bool poll = busy_poll_us > 0 && std::chrono::steady_clock::now() < poll_until;
      if (Status st = read_some(poll ? MSG_DONTWAIT : 0); !st) return st;
    }
    auto d = decode_header(
        std::span<const std::byte, kFrameHeaderBytes>(rbuf.data() + rbeg, kFrameHeaderBytes),
        1ull << 31);
    if (!d) return fail_connection(d.status());
    if (d->kind == FrameKind::kRequest)
      return fail_connection(error(Errc::kProtocol, "expected a response frame"));
    rbeg += kFrameHeaderBytes;
    // A doorbell left over from the request channel (the reply was taken from there).
    if (d->kind == FrameKind::kDoorbell) continue;
    h = *d;
  }
  auto resp = std::make_unique<Response>();
  resp->body.resize(h->length);
  const size_t have = std::min<size_t>(h->length, rend - rbeg);
  std::memcpy(resp->body.data(), rbuf.data() + rbeg, have);
  rbeg += have;
  if (rbeg == rend) rbeg = rend = 0;
  // The rest of a big reply goes straight into its body.
  if (Status st = recv_all(fd, std::span(resp->body).subspan(have), rfds); !st)
    return fail_connection(st);
  resp->msg = wire_util::verify_response(resp->body);
  // Descriptors belong to the reply that ends the call (closed with it unless taken).
  if (resp->msg == nullptr || resp->msg->body_type() != wire::Response::ProgressResp)
    resp->fds = std::exchange(rfds, {});
  return finish(std::move(resp), id);
}

Result<std::unique_ptr<Response>> Client::Impl::finish(std::unique_ptr<Response> resp,
                                                       uint64_t id) {
  if (resp->msg == nullptr) return error(Errc::kProtocol, "reply failed schema verification");
  if (resp->msg->code() != 0)
    return error(static_cast<Errc>(resp->msg->code()), wire_util::str(resp->msg->message()));
  if (resp->msg->id() != id) return error(Errc::kProtocol, "reply to another request");
  return resp;
}

Result<std::shared_ptr<ArenaMapping>> Client::Impl::arena(uint32_t id) {
  if (auto it = arenas.find(id); it != arenas.end()) return it->second;
  {
    MutexLock lock(g_arenas_mu);
    if (auto it = g_arenas.find({instance, id}); it != g_arenas.end()) {
      if (auto m = it->second.lock()) return arenas[id] = m;
    }
  }
  flatbuffers::FlatBufferBuilder fbb;
  auto resp = call(fbb, wire::Request::MapArenaReq, wire::CreateMapArenaReq(fbb, id).Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_MapArenaResp();
  int afd = (*resp)->take_fd();
  if (body == nullptr || body->arena() == nullptr || afd < 0) {
    if (afd >= 0) ::close(afd);
    return error(Errc::kProtocol, "arena reply without a descriptor");
  }
  uint64_t size = body->arena()->bytes();
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, afd, 0);
  int e = errno;
  ::close(afd);
  if (p == MAP_FAILED) return error(Errc::kIo, std::string("mmap arena: ") + std::strerror(e));
  auto m = std::make_shared<ArenaMapping>();
  m->base = static_cast<const std::byte*>(p);
  m->size = size;
  MutexLock lock(g_arenas_mu);
  auto& slot = g_arenas[{instance, id}];
  if (auto existing = slot.lock()) return arenas[id] = existing;  // another thread won
  slot = m;
  return arenas[id] = m;
}

Result<std::shared_ptr<ArenaMapping>> Client::Impl::gpu_pool(uint32_t id) {
  if (auto it = gpu_pools.find(id); it != gpu_pools.end()) return it->second;
  const std::pair<BlockKey, uint64_t> key{instance, kGpuPoolKey | id};
  {
    MutexLock lock(g_arenas_mu);
    if (auto it = g_arenas.find(key); it != g_arenas.end()) {
      if (auto m = it->second.lock()) return gpu_pools[id] = m;
    }
  }
  flatbuffers::FlatBufferBuilder fbb;
  auto resp = call(fbb, wire::Request::MapGpuPoolReq, wire::CreateMapGpuPoolReq(fbb, id).Union());
  if (!resp) return resp.status();
  const auto* body = (*resp)->msg->body_as_MapGpuPoolResp();
  if (body == nullptr || body->pool() == nullptr)
    return error(Errc::kProtocol, "GPU pool reply without a pool");
  const auto* info = body->pool();
  gpu::PoolExport e;
  e.type = static_cast<gpu::HandleType>(info->handle_type());
  e.device = client_device(info->device());  // this process's numbering
  e.bytes = info->bytes();
  e.fd = (*resp)->take_fd();  // import_pool owns it from here on
  if (e.device < 0) {
    if (e.fd >= 0) ::close(e.fd);
    return error(Errc::kUnavailable,
                 "GPU pool " + std::to_string(id) + " is on kvtierd's device " +
                     std::to_string(info->device()) +
                     ", which this process does not see (CUDA_VISIBLE_DEVICES)");
  }
  if (e.type == gpu::HandleType::kCudaIpc) {
    if (info->ipc_handle() == nullptr || info->ipc_handle()->size() != e.ipc_handle.size())
      return error(Errc::kProtocol, "GPU pool reply without its IPC handle");
    std::memcpy(e.ipc_handle.data(), info->ipc_handle()->data(), e.ipc_handle.size());
  } else if (e.fd < 0) {
    return error(Errc::kProtocol, "GPU pool reply without a descriptor");
  }
  auto imported = gpu::import_pool(e);
  if (!imported)
    return error(imported.status().code(), "cannot import GPU pool " + std::to_string(id) +
                                               " of device " + std::to_string(e.device) + " (" +
                                               gpu::handle_type_name(e.type) +
                                               "): " + imported.status().message());
  auto m = std::make_shared<ArenaMapping>();
  m->base = reinterpret_cast<const std::byte*>((*imported)->base());
  m->size = (*imported)->size();
  m->device = e.device;
  m->host_accessible = e.type == gpu::HandleType::kMemfd;
  m->pool = std::move(imported).value();
  if (const auto* ev = info->events(); ev != nullptr && ev->size() > 0) {
    if (ev->size() % 64 != 0) return error(Errc::kProtocol, "GPU pool events of a bad size");
    m->event_handles.resize(ev->size() / 64);
    std::memcpy(m->event_handles.data(), ev->data(), ev->size());
  }
  MutexLock lock(g_arenas_mu);
  auto& slot = g_arenas[key];
  if (auto existing = slot.lock()) return gpu_pools[id] = existing;  // another thread won
  slot = m;
  return gpu_pools[id] = m;
}

std::string default_socket_path() {
  if (const char* env = std::getenv("KVTIER_SOCKET"); env && *env) return env;
  if (::access("./var/kvtier.sock", F_OK) == 0) return "./var/kvtier.sock";
  return "/run/kvtier/kvtier.sock";
}

Result<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  auto impl = std::make_shared<Impl>();
  impl->socket_path = options.socket.empty() ? default_socket_path() : options.socket;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (impl->socket_path.size() >= sizeof(addr.sun_path))
    return error(Errc::kInvalidArgument, "socket path too long: " + impl->socket_path);
  std::memcpy(addr.sun_path, impl->socket_path.c_str(), impl->socket_path.size() + 1);
  impl->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->fd < 0) return error(Errc::kIo, std::string("socket: ") + std::strerror(errno));
  if (::connect(impl->fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    return error(e == EACCES ? Errc::kPermissionDenied : Errc::kUnavailable,
                 "cannot connect to kvtierd at " + impl->socket_path + ": " + std::strerror(e));
  }
  uint32_t busy_poll_us = options.busy_poll_us;
  if (const char* env = std::getenv("KVTIER_BUSY_POLL_US"); busy_poll_us == 0 && env != nullptr)
    busy_poll_us = static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  impl->busy_poll_us = std::min<uint32_t>(busy_poll_us, 100000);
  if (options.timeout_ms) {
    timeval tv{static_cast<time_t>(options.timeout_ms / 1000),
               static_cast<suseconds_t>((options.timeout_ms % 1000) * 1000)};
    ::setsockopt(impl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(impl->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  MutexLock lock(impl->mu);  // not shared yet; held for the calls' sake
  flatbuffers::FlatBufferBuilder fbb;
  auto hello = wire::CreateHelloReq(fbb, kProtocolVersion, static_cast<uint32_t>(::getpid()),
                                    fbb.CreateString(options.name));
  auto resp = impl->call(fbb, wire::Request::HelloReq, hello.Union());
  if (!resp) return resp.status();
  const auto* h = (*resp)->msg->body_as_HelloResp();
  if (h == nullptr || h->instance() == nullptr) return error(Errc::kProtocol, "bad hello reply");
  impl->session_id = h->session_id();
  impl->instance = wire_util::from_wire(*h->instance());
  impl->max_message_bytes = h->max_message_bytes();
  impl->daemon_carries_releases = h->carried_releases();
  if (h->arenas())
    for (const auto* a : *h->arenas()) impl->arena_sizes[a->id()] = a->bytes();
  impl->device = options.device;
  impl->gpu_backend = wire_util::str(h->gpu_backend());
  if (h->gpu_pools()) {
    for (const auto* p : *h->gpu_pools()) {  // one device may carry pools of several domains
      auto& have = impl->daemon_devices;
      if (std::any_of(have.begin(), have.end(),
                      [&](const auto& d) { return d.index == p->device(); }))
        continue;
      Impl::DaemonDevice d;
      d.index = p->device();
      if (p->uuid() != nullptr && p->uuid()->size() == gpu::DeviceUuid{}.size()) {
        d.uuid.emplace();
        std::memcpy(d.uuid->data(), p->uuid()->data(), d.uuid->size());
      }
      have.push_back(d);
    }
  }
  const char* channel_env = std::getenv("KVTIER_REQUEST_CHANNEL");
  if (impl->busy_poll_us > 0 && options.request_channel &&
      (channel_env == nullptr || std::string_view(channel_env) != "0")) {
    // A daemon that offers no channel (not polling, channels off, an older daemon) leaves the
    // connection on the socket; only a broken connection fails the connect.
    if (Status st = impl->open_channel(); !st && impl->fd < 0) return st;
  }
  lock.unlock();
  impl->release_mode = options.release_mode;
  if (const char* env = std::getenv("KVTIER_RELEASE_MODE"); env != nullptr && *env) {
    const std::string_view m(env);
    if (m == "deferred")
      impl->release_mode = ReleaseMode::kDeferred;
    else if (m == "posted")
      impl->release_mode = ReleaseMode::kPosted;
    else if (m == "round_trip")
      impl->release_mode = ReleaseMode::kRoundTrip;
    else
      return error(Errc::kInvalidArgument,
                   "KVTIER_RELEASE_MODE must be deferred, posted or round_trip, not '" +
                       std::string(m) + "'");
  }
  // A daemon that predates carried and one-way releases gets every release as a round trip.
  if (!impl->daemon_carries_releases) impl->release_mode = ReleaseMode::kRoundTrip;
  const char* index_env = std::getenv("KVTIER_LOOKUP_INDEX");
  impl->lookup_index = options.lookup_index && !(index_env && std::string_view(index_env) == "0");
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

}  // namespace kvtier
