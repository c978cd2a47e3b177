// Status and Result<T>: the one error type on kvtier's hot paths.
// Library error codes (errno, LMDB, liburing, CUDA) are converted to Errc in exactly one place
// per component.  Exceptions are used only for configuration and construction.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvtier {

// Values are part of the wire protocol (docs/protocol.md): append only, never renumber.
enum class Errc : uint16_t {
  kOk = 0,
  kInvalidArgument = 1,   // malformed request, wrong shape, bad value
  kNotFound = 2,          // no such key / lease / put
  kNoSpace = 3,           // tier full and nothing evictable
  kPermissionDenied = 4,  // peer not allowed for this namespace or admin request
  kProtocol = 5,          // bad frame, bad version, failed verification
  kBusy = 6,              // leased / in use; retry later
  kAlreadyExists = 7,     // key already sealed
  kIo = 8,                // I/O or system call failure
  kUnavailable = 9,       // daemon not reachable / shutting down
  kCorrupt = 10,          // checksum mismatch, bad header
  kInternal = 11,
  kLimit = 12,  // a configured limit (leases, message size, staging) reached
};

const char* errc_name(Errc e);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }

  bool is_ok() const { return code_ == Errc::kOk; }
  explicit operator bool() const { return is_ok(); }
  Errc code() const { return code_; }
  const std::string& message() const { return message_; }
  // "no_space: host tier full (12 blocks leased)"
  std::string to_string() const;

 private:
  Errc code_ = Errc::kOk;
  std::string message_;
};

inline Status error(Errc code, std::string message) {
  return Status(code, std::move(message));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Status status) : v_(std::move(status)) {}

  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  Status status() const { return is_ok() ? Status() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvtier
