#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "common/channel.h"

using namespace kvtier;

TEST_CASE("a channel created by the daemon maps on the client's side with the same areas") {
  auto d = Channel::create(64 * 1024, 256 * 1024);
  REQUIRE(d.is_ok());
  CHECK((*d)->bytes() == kChannelControlBytes + 64 * 1024 + 256 * 1024);
  auto c = Channel::map(::dup((*d)->fd()));
  REQUIRE(c.is_ok());
  CHECK((*c)->request_capacity() == 64 * 1024);
  CHECK((*c)->reply_capacity() == 256 * 1024);
  // Both mappings see the same memory: a request written by one side is read by the other.
  std::memcpy((*c)->request_area().data(), "hello", 5);
  (*c)->control().request_len.store(5);
  (*c)->control().request_seq.store(7, std::memory_order_release);
  CHECK((*d)->control().request_seq.load(std::memory_order_acquire) == 7);
  CHECK(std::memcmp((*d)->request_area().data(), "hello", 5) == 0);
  CHECK((*d)->reply_area().data() == (*d)->request_area().data() + 64 * 1024);
}

TEST_CASE("the channel memfd is sealed: a client cannot shrink or grow it") {
  auto d = Channel::create(4096, 4096);
  REQUIRE(d.is_ok());
  int fd = ::dup((*d)->fd());
  CHECK(::ftruncate(fd, 100) != 0);
  CHECK(errno == EPERM);
  CHECK(::ftruncate(fd, 1 << 20) != 0);
  CHECK(::fcntl(fd, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  ::close(fd);
}

TEST_CASE("a client refuses a channel whose control block is wrong or does not fit") {
  auto make = [](uint64_t bytes, uint32_t magic, uint32_t req, uint32_t rep) {
    int fd = ::memfd_create("t", MFD_CLOEXEC);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
    uint32_t words[4] = {magic, kChannelVersion, req, rep};
    REQUIRE(::pwrite(fd, words, sizeof(words), 0) == sizeof(words));
    return fd;
  };
  CHECK(Channel::map(make(100, kChannelMagic, 64, 64)).status().code() == Errc::kProtocol);
  CHECK(Channel::map(make(8192, 0x12345678, 64, 64)).status().code() == Errc::kProtocol);
  auto r = Channel::map(make(8192, kChannelMagic, 4096, 4096));
  CHECK(r.status().code() == Errc::kProtocol);
  CHECK_THAT(r.status().message(), Catch::Contains("do not fit"));
  CHECK(Channel::map(make(8192, kChannelMagic, 0, 64)).status().code() == Errc::kProtocol);
  CHECK(Channel::map(make(12288, kChannelMagic, 4096, 4096)).is_ok());
  CHECK(Channel::create(0, 64).status().code() == Errc::kInvalidArgument);
}
