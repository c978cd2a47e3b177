#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/frame.h"
#include "common/layout.h"
#include "common/wire.h"

using namespace kvtier;

TEST_CASE("frame header round trip and rejection") {
  FrameHeader h{kProtocolVersion, FrameKind::kResponse, 1234};
  auto bytes = encode_header(h);
  auto back = decode_header(bytes, 1 << 20);
  REQUIRE(back.is_ok());
  CHECK(back->length == 1234);
  CHECK(back->kind == FrameKind::kResponse);

  SECTION("too long") {
    CHECK(decode_header(bytes, 1000).status().code() == Errc::kLimit);
  }
  SECTION("bad magic") {
    bytes[0] = std::byte{'X'};
    CHECK(decode_header(bytes, 1 << 20).status().code() == Errc::kProtocol);
  }
  SECTION("wrong version") {
    bytes[4] = std::byte{9};
    auto r = decode_header(bytes, 1 << 20);
    CHECK(r.status().code() == Errc::kProtocol);
    CHECK_THAT(r.status().message(), Catch::Contains("version 9"));
  }
  SECTION("unknown kind") {
    bytes[6] = std::byte{3};
    CHECK(decode_header(bytes, 1 << 20).status().code() == Errc::kProtocol);
  }
}

TEST_CASE("a doorbell frame has no body") {
  auto ring = encode_header({kProtocolVersion, FrameKind::kDoorbell, 0});
  auto back = decode_header(ring, 1 << 20);
  REQUIRE(back.is_ok());
  CHECK(back->kind == FrameKind::kDoorbell);
  auto bad = encode_header({kProtocolVersion, FrameKind::kDoorbell, 8});
  auto r = decode_header(bad, 1 << 20);
  CHECK(r.status().code() == Errc::kProtocol);
  CHECK_THAT(r.status().message(), Catch::Contains("doorbell"));
}

TEST_CASE("send_all and recv_all carry bytes and descriptors") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  std::array<std::byte, 3> a{std::byte{1}, std::byte{2}, std::byte{3}};
  std::array<std::byte, 2> b{std::byte{4}, std::byte{5}};
  int fds[1] = {pipefd[1]};
  REQUIRE(send_all(sv[0], a, b, fds).is_ok());
  std::array<std::byte, 5> got{};
  std::vector<int> rfds;
  REQUIRE(recv_all(sv[1], got, rfds).is_ok());
  CHECK(std::to_integer<int>(got[4]) == 5);
  REQUIRE(rfds.size() == 1);
  REQUIRE(::write(rfds[0], "x", 1) == 1);  // the received fd is the pipe's write end
  char c = 0;
  REQUIRE(::read(pipefd[0], &c, 1) == 1);
  CHECK(c == 'x');
  ::close(rfds[0]);
  ::close(sv[0]);
  CHECK(recv_all(sv[1], got, rfds).code() == Errc::kUnavailable);
  ::close(sv[1]);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

TEST_CASE("verify_request rejects garbage and accepts a real message") {
  std::vector<std::byte> junk(64, std::byte{0xff});
  CHECK(wire_util::verify_request(junk) == nullptr);
  flatbuffers::FlatBufferBuilder fbb;
  auto body = wire::CreateLookupReq(fbb, fbb.CreateString("ns"),
                                    wire_util::keys_to_wire(fbb, std::vector<BlockKey>{{1, 2}}));
  fbb.Finish(wire::CreateRequestMsg(fbb, 7, wire::Request::LookupReq, body.Union()));
  auto* msg = wire_util::verify_request(wire_util::bytes_of(fbb));
  REQUIRE(msg != nullptr);
  CHECK(msg->id() == 7);
  REQUIRE(msg->body_as_LookupReq() != nullptr);
  CHECK(wire_util::keys_from_wire(msg->body_as_LookupReq()->keys())[0] == BlockKey{1, 2});
}

TEST_CASE("put layouts are validated") {
  BlockLayout l;
  l.total_bytes = 256;
  TensorLayout t;
  t.name = "k";
  t.dtype = DType::kF16;
  t.shape = {4, 16};
  t.bytes = t.raw_bytes = 128;
  l.tensors.push_back(t);
  CHECK(validate_put_layout(l, 1 << 20).is_ok());
  auto v = t;
  v.name = "v";
  v.offset = 64;  // overlaps k
  l.tensors.push_back(v);
  CHECK(validate_put_layout(l, 1 << 20).code() == Errc::kInvalidArgument);
  l.tensors[1].offset = 128;
  CHECK(validate_put_layout(l, 1 << 20).is_ok());
  l.tensors[1].name = "k";
  CHECK(validate_put_layout(l, 1 << 20).code() == Errc::kInvalidArgument);
  l.tensors[1].name = "v";
  l.tensors[1].shape = {4, 17};
  CHECK(validate_put_layout(l, 1 << 20).code() == Errc::kInvalidArgument);
  l.tensors[1].shape = {4, 16};
  l.tensors[1].offset = 200;
  CHECK(validate_put_layout(l, 1 << 20).code() == Errc::kInvalidArgument);
  l.tensors[1].offset = 128;
  CHECK(validate_put_layout(l, 100).code() == Errc::kInvalidArgument);
}
