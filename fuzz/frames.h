// Structure-aware mutation of a byte stream of request frames (common/frame.h), shared by the
// session and channel harnesses.  An input is a sequence of frames, each a 16-byte header and
// a FlatBuffers RequestMsg body, possibly followed by bytes that do not frame.  Most
// mutations keep that shape (a body mutated by libFuzzer with its header's length fixed, a
// frame replaced by or inserted as a freshly generated request of any type, frames
// duplicated, dropped or swapped); the rest mutate the raw stream, headers included.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz/requests.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace kvtier::fuzz {

struct Stream {
  std::vector<Bytes> frames;  // whole frames, header included
  Bytes tail;                 // bytes that do not form a frame

  static Stream split(const uint8_t* data, size_t size) {
    Stream s;
    size_t at = 0;
    while (size - at >= kFrameHeaderBytes) {
      uint32_t magic, length;
      std::memcpy(&magic, data + at, 4);
      std::memcpy(&length, data + at + 8, 4);
      if (magic != kFrameMagic || length > size - at - kFrameHeaderBytes) break;
      s.frames.emplace_back(data + at, data + at + kFrameHeaderBytes + length);
      at += kFrameHeaderBytes + length;
    }
    s.tail.assign(data + at, data + size);
    return s;
  }

  size_t size() const {
    size_t n = tail.size();
    for (const auto& f : frames) n += f.size();
    return n;
  }

  // Writes the stream to `out` when it fits in max_size; returns its size, or 0.
  size_t join(uint8_t* out, size_t max_size) const {
    const size_t n = size();
    if (n > max_size || n == 0) return 0;
    size_t at = 0;
    for (const auto& f : frames) {
      std::memcpy(out + at, f.data(), f.size());
      at += f.size();
    }
    if (!tail.empty()) std::memcpy(out + at, tail.data(), tail.size());
    return n;
  }
};

// Sets a frame's length field to its body's size.
inline void fix_length(Bytes& frame) {
  const auto length = static_cast<uint32_t>(frame.size() - kFrameHeaderBytes);
  std::memcpy(frame.data() + 8, &length, 4);
}

inline size_t mutate_frames(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  Gen g(seed);
  Stream s = Stream::split(data, size);
  const unsigned op = static_cast<unsigned>(g.below(s.frames.empty() ? 2 : 8));
  const uint64_t id = 1 + g.below(64);
  switch (op) {
    case 0:  // the raw stream, headers and all
      return LLVMFuzzerMutate(data, size, max_size);
    case 1:  // insert a new request
    case 2:
      s.frames.insert(s.frames.begin() + static_cast<ptrdiff_t>(g.below(s.frames.size() + 1)),
                      frame_of(g.any_request(id)));
      break;
    case 3:  // replace one by a new request
      s.frames[g.below(s.frames.size())] = frame_of(g.any_request(id));
      break;
    case 4:
    case 5: {  // libFuzzer's mutations inside one body; the header follows its size
      Bytes& f = s.frames[g.below(s.frames.size())];
      const size_t body = f.size() - kFrameHeaderBytes;
      if (body == 0) {
        f = frame_of(g.any_request(id));
        break;
      }
      const size_t room = body + 64;
      f.resize(kFrameHeaderBytes + room);
      f.resize(kFrameHeaderBytes + LLVMFuzzerMutate(f.data() + kFrameHeaderBytes, body, room));
      fix_length(f);
      break;
    }
    case 6: {  // duplicate one
      const size_t i = g.below(s.frames.size());
      Bytes copy = s.frames[i];
      s.frames.insert(s.frames.begin() + static_cast<ptrdiff_t>(g.below(s.frames.size() + 1)),
                      std::move(copy));
      break;
    }
    default:  // drop one, or swap two
      if (g.chance(50) || s.frames.size() < 2) {
        s.frames.erase(s.frames.begin() + static_cast<ptrdiff_t>(g.below(s.frames.size())));
      } else {
        std::swap(s.frames[g.below(s.frames.size())], s.frames[g.below(s.frames.size())]);
      }
      break;
  }
  if (const size_t n = s.join(data, max_size)) return n;
  return LLVMFuzzerMutate(data, size, max_size);
}

// The first frames of one stream, the last of the other.
inline size_t cross_frames(const uint8_t* a, size_t a_size, const uint8_t* b, size_t b_size,
                           uint8_t* out, size_t max_size, unsigned seed) {
  Gen g(seed);
  Stream x = Stream::split(a, a_size), y = Stream::split(b, b_size);
  Stream s;
  const size_t from_x = g.below(x.frames.size() + 1), from_y = g.below(y.frames.size() + 1);
  s.frames.assign(x.frames.begin(), x.frames.begin() + static_cast<ptrdiff_t>(from_x));
  s.frames.insert(s.frames.end(), y.frames.begin() + static_cast<ptrdiff_t>(from_y),
                  y.frames.end());
  s.tail = y.tail;
  return s.join(out, max_size);
}

}  // namespace kvtier::fuzz
