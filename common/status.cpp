#include "kvtier/status.h"

#include "kvtier/types.h"

namespace kvtier {

const char* errc_name(Errc e) {
  switch (e) {
    case Errc::kOk:
      return "ok";
    case Errc::kInvalidArgument:
      return "invalid_argument";
    case Errc::kNotFound:
      return "not_found";
    case Errc::kNoSpace:
      return "no_space";
    case Errc::kPermissionDenied:
      return "permission_denied";
    case Errc::kProtocol:
      return "protocol_error";
    case Errc::kBusy:
      return "busy";
    case Errc::kAlreadyExists:
      return "already_exists";
    case Errc::kIo:
      return "io_error";
    case Errc::kUnavailable:
      return "unavailable";
    case Errc::kCorrupt:
      return "corrupt";
    case Errc::kInternal:
      return "internal";
    case Errc::kLimit:
      return "limit";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return std::string(errc_name(code_)) + ": " + message_;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kU8:
      return "u8";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kF32:
      return "f32";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::kRaw:
      return "raw";
    case Codec::kNf4:
      return "nf4";
  }
  return "?";
}

}  // namespace kvtier
