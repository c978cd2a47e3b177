// Hostile input on the socket: the daemon answers with an error or closes that connection,
// and keeps serving everyone else.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/channel.h"
#include "common/frame.h"
#include "common/wire.h"
#include "kvtier/client.h"
#include "tests/testing/blocks.h"
#include "tests/testing/daemon.h"

using namespace kvtier;
using kvtier::testing::Daemon;
using kvtier::testing::DaemonOptions;

namespace {

int raw_connect(const Daemon& d) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, d.socket().c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void send_bytes(int fd, const void* p, size_t n) {
  REQUIRE(::send(fd, p, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n));
}

struct ReplyHead {
  Errc code;
  uint64_t id;  // the request's
};

// Reads one reply; nullopt when the daemon closed the connection.
std::optional<ReplyHead> read_reply_head(int fd) {
  std::array<std::byte, kFrameHeaderBytes> h;
  std::vector<int> fds;
  if (!recv_all(fd, h, fds)) return std::nullopt;
  auto hdr = decode_header(h, 1 << 30);
  REQUIRE(hdr.is_ok());
  std::vector<std::byte> body(hdr->length);
  REQUIRE(recv_all(fd, body, fds).is_ok());
  const auto* msg = wire_util::verify_response(body);
  REQUIRE(msg != nullptr);
  return ReplyHead{static_cast<Errc>(msg->code()), msg->id()};
}

// One reply's error code, or nullopt when the daemon closed the connection.
std::optional<Errc> read_reply(int fd) {
  auto r = read_reply_head(fd);
  return r ? std::optional(r->code) : std::nullopt;
}

// EOF, or a reset when the daemon closed with our junk still unread in its buffer.
bool closed_by_daemon(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

void daemon_still_serves(const Daemon& d) {
  auto c = Client::connect(d.socket());
  REQUIRE(c.is_ok());
  auto keys = chain_keys("ns", std::vector<uint32_t>(16, 7), 16);
  kvtier::testing::KvBlock b(keys[0], 8);
  Status st = (*c)->put("ns", keys[0], b.tensors);
  CHECK((st.is_ok() || st.code() == Errc::kAlreadyExists));
  CHECK((*c)->lookup("ns", keys).value() == 1);
}

std::vector<std::byte> frame_of(std::span<const std::byte> body, uint16_t version = 1) {
  auto h = encode_header({version, FrameKind::kRequest, static_cast<uint32_t>(body.size())});
  std::vector<std::byte> out(h.begin(), h.end());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<std::byte> frame_of(flatbuffers::FlatBufferBuilder& fbb, uint16_t version = 1) {
  return frame_of(wire_util::bytes_of(fbb), version);
}

}  // namespace

TEST_CASE("garbage bytes: error reply, connection closed, daemon serving") {
  Daemon d;
  int fd = raw_connect(d);
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  send_bytes(fd, junk, sizeof(junk));
  CHECK(read_reply(fd) == Errc::kProtocol);
  CHECK(closed_by_daemon(fd));
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("wrong protocol version: error reply naming the versions") {
  Daemon d;
  int fd = raw_connect(d);
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(
      wire::CreateRequestMsg(fbb, 1, wire::Request::StatsReq, wire::CreateStatsReq(fbb).Union()));
  auto f = frame_of(fbb, 7);
  send_bytes(fd, f.data(), f.size());
  CHECK(read_reply(fd) == Errc::kProtocol);
  CHECK(closed_by_daemon(fd));
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("oversized frame header: refused before reading the body") {
  Daemon d;
  int fd = raw_connect(d);
  auto h = encode_header({kProtocolVersion, FrameKind::kRequest, 1u << 30});
  send_bytes(fd, h.data(), h.size());
  CHECK(read_reply(fd) == Errc::kLimit);
  CHECK(closed_by_daemon(fd));
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("truncated message then hang-up: the daemon drops the connection") {
  Daemon d;
  int fd = raw_connect(d);
  auto h = encode_header({kProtocolVersion, FrameKind::kRequest, 1000});
  send_bytes(fd, h.data(), h.size());
  send_bytes(fd, "abc", 3);
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("a body that fails verification gets an error and the connection stays usable") {
  Daemon d;
  int fd = raw_connect(d);
  std::vector<std::byte> body(256);
  std::mt19937 rng(42);
  for (auto& b : body) b = std::byte(rng());
  auto h = encode_header({kProtocolVersion, FrameKind::kRequest, 256});
  send_bytes(fd, h.data(), h.size());
  send_bytes(fd, body.data(), body.size());
  CHECK(read_reply(fd) == Errc::kProtocol);
  // Still framed: a valid request on the same connection works.
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(
      wire::CreateRequestMsg(fbb, 2, wire::Request::HealthReq, wire::CreateHealthReq(fbb).Union()));
  auto f = frame_of(fbb);
  send_bytes(fd, f.data(), f.size());
  CHECK(read_reply(fd) == Errc::kOk);
  ::close(fd);
}

TEST_CASE("valid frames with bad contents get clear errors") {
  Daemon d;
  int fd = raw_connect(d);
  auto roundtrip = [&](flatbuffers::FlatBufferBuilder& fbb) {
    auto f = frame_of(fbb);
    send_bytes(fd, f.data(), f.size());
    return read_reply(fd);
  };
  {  // a request with no body
    flatbuffers::FlatBufferBuilder fbb;
    fbb.Finish(wire::CreateRequestMsg(fbb, 1));
    CHECK(roundtrip(fbb) == Errc::kProtocol);
  }
  {  // lookup without keys
    flatbuffers::FlatBufferBuilder fbb;
    auto req = wire::CreateLookupReq(fbb, fbb.CreateString("ns"));
    fbb.Finish(wire::CreateRequestMsg(fbb, 2, wire::Request::LookupReq, req.Union()));
    CHECK(roundtrip(fbb) == Errc::kInvalidArgument);
  }
  {  // a put whose layout lies about its sizes
    flatbuffers::FlatBufferBuilder fbb;
    BlockLayout l;
    l.total_bytes = 64;
    l.tensors.push_back(TensorLayout{
        "k", DType::kF16, {1000, 1000}, {}, Codec::kRaw, Nf4Layout::kRowBlocks, 0, 64, 64, 0});
    wire::Key128 key(1, 2);
    auto req =
        wire::CreatePutBeginReq(fbb, fbb.CreateString("ns"), &key, wire_util::to_wire(fbb, l));
    fbb.Finish(wire::CreateRequestMsg(fbb, 3, wire::Request::PutBeginReq, req.Union()));
    CHECK(roundtrip(fbb) == Errc::kInvalidArgument);
  }
  {  // sealing a put that was never begun
    flatbuffers::FlatBufferBuilder fbb;
    fbb.Finish(wire::CreateRequestMsg(fbb, 4, wire::Request::SealReq,
                                      wire::CreateSealReq(fbb, 99).Union()));
    CHECK(roundtrip(fbb) == Errc::kNotFound);
  }
  {  // an empty namespace
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<BlockKey> keys = {{1, 2}};
    auto req = wire::CreateGetReq(fbb, fbb.CreateString(""), wire_util::keys_to_wire(fbb, keys));
    fbb.Finish(wire::CreateRequestMsg(fbb, 5, wire::Request::GetReq, req.Union()));
    CHECK(roundtrip(fbb) == Errc::kInvalidArgument);
  }
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("a request type without its body, or with another type's body, is a protocol error") {
  // Regression (issue 14, defect 1): an absent body table passes FlatBuffers verification and
  // the handlers dereferenced it (SIGSEGV).  No hello first: any peer could send this.
  Daemon d;
  int fd = raw_connect(d);
  const auto first = static_cast<uint8_t>(wire::Request::MIN) + 1;
  const auto last = static_cast<uint8_t>(wire::Request::MAX);
  for (uint8_t t = first; t <= last; ++t) {
    INFO("request type " << wire::EnumNameRequest(static_cast<wire::Request>(t)));
    flatbuffers::FlatBufferBuilder fbb;
    wire::RequestMsgBuilder b(fbb);
    b.add_id(t);
    b.add_body_type(static_cast<wire::Request>(t));
    fbb.Finish(b.Finish());
    auto f = frame_of(fbb);
    send_bytes(fd, f.data(), f.size());
    auto reply = read_reply_head(fd);
    REQUIRE(reply.has_value());
    CHECK(reply->code == Errc::kProtocol);
    CHECK(reply->id == t);
  }
  // A body of another type (a put's table labelled as each other request) is read as that
  // type: whatever it means, the answer is a reply and the daemon keeps serving.
  for (uint8_t t = first; t <= last; ++t) {
    const auto type = static_cast<wire::Request>(t);
    // The disk jobs answer with progress frames first; their bodies are empty tables anyway.
    if (type == wire::Request::CompactReq || type == wire::Request::VerifyReq) continue;
    INFO("request type " << wire::EnumNameRequest(type));
    flatbuffers::FlatBufferBuilder fbb;
    wire::Key128 key(1, 2);
    auto put = wire::CreatePutBeginReq(fbb, fbb.CreateString("ns"), &key, 0, true,
                                       fbb.CreateVector(std::vector<uint8_t>(40, 0xff)), 7);
    fbb.Finish(wire::CreateRequestMsg(fbb, 1000 + t, type, put.Union()));
    auto f = frame_of(fbb);
    send_bytes(fd, f.data(), f.size());
    auto reply = read_reply_head(fd);
    REQUIRE(reply.has_value());
    // Answered as that type, or refused whole when the put's fields fail that type's
    // verification (the reply to an unverified body carries id 0).
    CHECK((reply->id == 1000u + t || (reply->id == 0 && reply->code == Errc::kProtocol)));
  }
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("pipelined, dribbled and large frames are answered in order") {
  // The daemon reads whatever the socket holds and handles the frames in it one by one.
  Daemon d;
  int fd = raw_connect(d);
  auto health = [](uint64_t id) {
    flatbuffers::FlatBufferBuilder fbb;
    fbb.Finish(wire::CreateRequestMsg(fbb, id, wire::Request::HealthReq,
                                      wire::CreateHealthReq(fbb).Union()));
    return frame_of(fbb);
  };
  auto reply_id = [&] {
    auto r = read_reply_head(fd);
    REQUIRE(r.has_value());
    return r->id;
  };
  // Three requests in one write, then the replies in order.  The first body carries 3 bytes
  // past its FlatBuffer (allowed: verification stays inside the buffer), so the next frame
  // starts off any 8-byte boundary within the write.
  std::vector<std::byte> three;
  for (uint64_t id : {11, 12, 13}) {
    auto f = health(id);
    if (id == 11) {
      f.insert(f.end(), 3, std::byte{0});
      auto h = encode_header({kProtocolVersion, FrameKind::kRequest,
                              static_cast<uint32_t>(f.size() - kFrameHeaderBytes)});
      std::copy(h.begin(), h.end(), f.begin());
    }
    three.insert(three.end(), f.begin(), f.end());
  }
  send_bytes(fd, three.data(), three.size());
  CHECK(reply_id() == 11);
  CHECK(reply_id() == 12);
  CHECK(reply_id() == 13);
  // One request a byte at a time.
  auto f = health(14);
  for (const std::byte& b : f) send_bytes(fd, &b, 1);
  CHECK(reply_id() == 14);
  // A request far bigger than the read buffer (1 MiB of embedding values; the namespace has
  // no cached chunk, so it is refused), then a small one on the same connection; the second
  // one's first bytes travel in the same write as the end of the first.
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<float> values(256 * 1024, 0.5f);
  wire::Key128 key(7, 7);
  std::vector<flatbuffers::Offset<wire::ModalityVector>> vs = {
      wire::CreateModalityVector(fbb, fbb.CreateString("vision"), fbb.CreateVector(values))};
  std::vector<flatbuffers::Offset<wire::ChunkEmbeddings>> cs = {
      wire::CreateChunkEmbeddings(fbb, &key, fbb.CreateVector(vs))};
  auto req = wire::CreateAddEmbeddingsReq(fbb, fbb.CreateString("ns"), fbb.CreateVector(cs));
  fbb.Finish(wire::CreateRequestMsg(fbb, 15, wire::Request::AddEmbeddingsReq, req.Union()));
  auto big = frame_of(fbb);
  auto small = health(16);
  big.insert(big.end(), small.begin(), small.begin() + 5);
  send_bytes(fd, big.data(), big.size());
  send_bytes(fd, small.data() + 5, small.size() - 5);
  CHECK(reply_id() == 15);
  CHECK(reply_id() == 16);
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("random frames do not crash the daemon (fuzz smoke)") {
  Daemon d;
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    int fd = raw_connect(d);
    // A valid header around random bodies of random sizes, sometimes a random header.
    uint32_t len = rng() % 512;
    std::vector<std::byte> buf(kFrameHeaderBytes + len);
    auto h = encode_header({kProtocolVersion, FrameKind::kRequest, len});
    std::memcpy(buf.data(), h.data(), h.size());
    for (size_t j = (i % 4 == 0 ? 0 : kFrameHeaderBytes); j < buf.size(); ++j)
      buf[j] = std::byte(rng());
    ::send(fd, buf.data(), buf.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    char sink[4096];
    while (::recv(fd, sink, sizeof(sink), 0) > 0) {
    }
    ::close(fd);
  }
  REQUIRE(d.running());
  daemon_still_serves(d);
}

namespace {

// Reads one reply and the descriptors that came with it.
const wire::ResponseMsg* read_reply_with_fds(int fd, std::vector<std::byte>& body,
                                             std::vector<int>& fds) {
  std::array<std::byte, kFrameHeaderBytes> h;
  REQUIRE(recv_all(fd, h, fds).is_ok());
  auto hdr = decode_header(h, 1 << 30);
  REQUIRE(hdr.is_ok());
  body.resize(hdr->length);
  REQUIRE(recv_all(fd, body, fds).is_ok());
  return wire_util::verify_response(body);
}

// Waits for the daemon's answer to channel request `seq`; its body, verified.
const wire::ResponseMsg* channel_reply(Channel& ch, uint64_t seq, std::vector<std::byte>& body) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (ch.control().reply_seq.load() != seq) {
    if (std::chrono::steady_clock::now() > until) FAIL("no reply to channel request " << seq);
    std::this_thread::yield();
  }
  const uint32_t len = ch.control().reply_len.load();
  REQUIRE(len <= ch.reply_capacity());
  body.assign(ch.reply_area().begin(), ch.reply_area().begin() + len);
  return wire_util::verify_response(body);
}

// A RequestMsg body: a HealthReq, or an OpenChannelReq.
std::vector<std::byte> request_body(uint64_t id, bool open_channel = false) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(open_channel ? wire::CreateRequestMsg(fbb, id, wire::Request::OpenChannelReq,
                                                   wire::CreateOpenChannelReq(fbb).Union())
                          : wire::CreateRequestMsg(fbb, id, wire::Request::HealthReq,
                                                   wire::CreateHealthReq(fbb).Union()));
  auto b = wire_util::bytes_of(fbb);
  return {b.begin(), b.end()};
}

}  // namespace

TEST_CASE("a hostile request channel: bad lengths and bodies get errors, no resizing, no crash") {
  DaemonOptions o;
  o.busy_poll_us = 200;
  Daemon d(o);
  int fd = raw_connect(d);
  auto f = frame_of(request_body(1, true));
  send_bytes(fd, f.data(), f.size());
  std::vector<std::byte> body;
  std::vector<int> fds;
  const auto* open = read_reply_with_fds(fd, body, fds);
  REQUIRE(open != nullptr);
  REQUIRE(open->code() == 0);
  REQUIRE(fds.size() == 1);
  auto ch = Channel::map(fds[0]).value();
  CHECK(ch->request_capacity() == open->body_as_OpenChannelResp()->request_bytes());
  // The daemon reads this memory: the client cannot shrink it under it (SIGBUS) or grow it.
  CHECK(::ftruncate(ch->fd(), 4096) != 0);
  CHECK(::ftruncate(ch->fd(), 64 << 20) != 0);
  auto& c = ch->control();
  const auto ring = encode_header({kProtocolVersion, FrameKind::kDoorbell, 0});
  // As libkvtier does: publish, then ring the daemon if it sleeps (unless told not to).
  auto publish = [&](uint64_t seq, std::span<const std::byte> req, uint32_t len,
                     bool ring_if_asleep = true) {
    if (!req.empty()) std::memcpy(ch->request_area().data(), req.data(), req.size());
    c.request_len.store(len);
    c.request_seq.store(seq);
    if (ring_if_asleep && c.daemon_sleeping.exchange(0) != 0)
      send_bytes(fd, ring.data(), ring.size());
  };

  // A length beyond the area, then a random body: error replies through the channel.
  publish(5, {}, 1u << 30);
  const auto* r = channel_reply(*ch, 5, body);
  REQUIRE(r != nullptr);
  CHECK(static_cast<Errc>(r->code()) == Errc::kProtocol);
  std::vector<std::byte> junk(200);
  std::mt19937 rng(7);
  for (auto& b : junk) b = std::byte(rng());
  publish(6, junk, 200);
  r = channel_reply(*ch, 6, body);
  REQUIRE(r != nullptr);
  CHECK(static_cast<Errc>(r->code()) == Errc::kProtocol);
  // A valid request through the channel.
  auto h7 = request_body(7);
  publish(7, h7, static_cast<uint32_t>(h7.size()));
  r = channel_reply(*ch, 7, body);
  REQUIRE(r != nullptr);
  CHECK(r->code() == 0);
  CHECK(r->id() == 7);
  // The marker: request 8 comes on the socket, and so does its reply.
  c.request_len.store(kChannelOnSocket);
  c.request_seq.store(8);
  auto f8 = frame_of(request_body(8));
  send_bytes(fd, f8.data(), f8.size());
  auto head = read_reply_head(fd);
  REQUIRE(head.has_value());
  CHECK(head->id == 8);
  CHECK(head->code == Errc::kOk);
  // Once its poll window is over the daemon sleeps, says so, and needs a doorbell.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(c.daemon_sleeping.load() == 1);
  auto h9 = request_body(9);
  publish(9, h9, static_cast<uint32_t>(h9.size()), false);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(c.reply_seq.load() == 7);  // not seen: the daemon sleeps on the socket
  send_bytes(fd, ring.data(), ring.size());
  r = channel_reply(*ch, 9, body);
  REQUIRE(r != nullptr);
  CHECK(r->id() == 9);
  // A second channel on the same connection is refused.
  auto h10 = request_body(10, true);
  publish(10, h10, static_cast<uint32_t>(h10.size()));
  r = channel_reply(*ch, 10, body);
  REQUIRE(r != nullptr);
  CHECK(static_cast<Errc>(r->code()) == Errc::kAlreadyExists);
  // A doorbell with a body is a broken stream: an error, then the connection closes.
  auto bad = encode_header({kProtocolVersion, FrameKind::kRequest, 0});
  bad[6] = std::byte{2};
  bad[8] = std::byte{8};
  send_bytes(fd, bad.data(), bad.size());
  CHECK(read_reply(fd) == Errc::kProtocol);
  CHECK(closed_by_daemon(fd));
  ::close(fd);
  daemon_still_serves(d);
}

TEST_CASE("the memfds a client holds (staging, channel) are sealed against resizing") {
  DaemonOptions o;
  o.busy_poll_us = 200;
  Daemon d(o);
  ClientOptions co;
  co.socket = d.socket();
  co.busy_poll_us = 100;
  auto c = Client::connect(co).value();
  REQUIRE(c->uses_request_channel());
  auto keys = chain_keys("ns", std::vector<uint32_t>(16, 3), 16);
  kvtier::testing::KvBlock b(keys[0], 8);
  REQUIRE(c->put("ns", keys[0], b.tensors).is_ok());
  // The daemon's own descriptors, as the client received them.
  int found = 0;
  const auto fd_dir = std::filesystem::path("/proc") / std::to_string(d.pid()) / "fd";
  for (const auto& e : std::filesystem::directory_iterator(fd_dir)) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.find("memfd:kvtier-staging") == std::string::npos &&
        target.find("memfd:kvtier-channel") == std::string::npos)
      continue;
    int mfd = ::open(e.path().c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(mfd >= 0);
    CHECK(::fcntl(mfd, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
    CHECK(::ftruncate(mfd, 0) != 0);
    ::close(mfd);
    ++found;
  }
  CHECK(found == 2);
  CHECK(c->lookup("ns", keys).value() == 1);
}

TEST_CASE("names that are not UTF-8, or hold control characters, are refused at the edge") {
  // Regression (issue 14, defect 4): a namespace of invalid UTF-8 was stored, and then
  // `kvtierctl ls` failed with a JSON exception until the block was evicted.
  Daemon d;
  auto c = Client::connect(d.socket()).value();
  const BlockKey key{7, 7};
  kvtier::testing::KvBlock b(key, 4);
  auto refused = [](const Status& st, const std::string& field) {
    CHECK(st.code() == Errc::kInvalidArgument);
    CHECK_THAT(st.message(), Catch::Contains(field));
  };
  refused(c->put("ns\xff", key, b.tensors), "namespace");
  refused(c->put("ns\xc0\xaf", key, b.tensors), "namespace");  // overlong '/'
  refused(c->put(std::string("ns\0x", 4), key, b.tensors), "namespace");
  refused(c->lookup("\xed\xa0\x80", std::span(&key, 1)).status(), "namespace");
  refused(c->get("ns\xfe", std::span(&key, 1)).status(), "namespace");
  refused(c->list_json("ns\xff").status(), "namespace");
  std::vector<TensorIn> bad_tensor = {
      TensorIn{std::string("k\0", 2), DType::kF16, {4, 128}, b.k.data()}};
  refused(c->put("ns", key, bad_tensor), "tensor name");
  bad_tensor[0].name = "k\xff";
  refused(c->put("ns", key, bad_tensor), "tensor name");
  // A valid name outside ASCII is a name like any other.
  REQUIRE(c->put("ns/é", key, b.tensors).is_ok());
  REQUIRE(c->put("ns", key, b.tensors).is_ok());
  std::vector<ChunkEmbeddings> emb = {{key, {{"vision\xff", std::vector<float>(8, 1.f)}}}};
  Status st = c->add_embeddings("ns", emb);
  // Without the index the request is refused before the names are read.
  if (st.code() != Errc::kUnavailable) refused(st, "modality");
  std::vector<SearchQuery> q = {{"\x01vision", std::vector<float>(8, 1.f), 0.f, 1.f}};
  auto hits = c->search("ns", q, 4);
  if (hits.status().code() != Errc::kUnavailable) refused(hits.status(), "modality");
  // Everything the daemon lists is valid JSON.
  auto ls = c->list_json();
  REQUIRE(ls.is_ok());
  auto j = nlohmann::json::parse(*ls);
  CHECK(j.dump().find("ns/\xc3\xa9") != std::string::npos);
}

TEST_CASE("a client whose process name is not UTF-8 does not break `clients`") {
  Daemon d;
  char old_name[17] = {};
  ::prctl(PR_GET_NAME, old_name);
  ::prctl(PR_SET_NAME, "bad\xff\xfe");
  auto odd = Client::connect(d.socket());
  ::prctl(PR_SET_NAME, old_name);
  REQUIRE(odd.is_ok());
  auto c = Client::connect(d.socket()).value();
  auto clients = c->clients_json();
  REQUIRE(clients.is_ok());
  CHECK_NOTHROW(nlohmann::json::parse(*clients));
  CHECK_THAT(*clients, Catch::Contains("bad\xef\xbf\xbd"));  // U+FFFD for the bad bytes
}
