// A connection's staging area: a memfd the client maps read-write and fills before `seal`.
//
// Ranges are handed out by a first-fit allocator whose bookkeeping lives in daemon memory only
// (never in the shared pages, which the client may scribble on).  The daemon treats staging
// bytes as untrusted input: it copies or encodes them into the tier and checksums the copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "kvtier/status.h"

namespace kvtier {

class Staging {
 public:
  static Result<std::unique_ptr<Staging>> create(uint64_t bytes);
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  const std::byte* data(uint64_t offset) const { return base_ + offset; }

  Result<uint64_t> allocate(uint64_t bytes);  // 64-byte aligned offset
  void free(uint64_t offset);

 private:
  Staging(int fd, std::byte* base, uint64_t size);
  int fd_;
  std::byte* base_;
  uint64_t size_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length, coalesced
  std::map<uint64_t, uint64_t> used_;  // offset -> length
};

}  // namespace kvtier
