// Helpers for the disk tier tests: scratch directories, backends by name, layouts, payloads
// and blocking wrappers around the asynchronous calls.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <random>

#include "tiers/disk/disk_tier.h"
#include "tests/testing/devices/memory_device.h"
#include "tests/testing/devices/fault_device.h"

namespace kvtier::testing {

inline std::filesystem::path scratch_dir(const std::string& name) {
  auto p = std::filesystem::path(KVTIER_BINARY_DIR) / "disk_test_tmp" /
           (name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// A backend by name; the memory backend keeps its bytes in `mem` so a reopen sees them.
struct Backend {
  std::string name;
  std::shared_ptr<MemoryDisk> mem = make_memory_disk();
  // nullptr (and a printed reason) when the backend is refused on this machine.
  std::unique_ptr<Device> make(const std::filesystem::path& dir) {
    FileDeviceOptions fo{dir, true, 2, 64, false};
    if (name == "memory") return make_memory_device(mem);
    if (name == "threads") return std::move(make_thread_device(fo).value());
    auto u = make_uring_device(fo);
    if (!u) {
      WARN("io_uring backend skipped: " << u.status().message());
      return nullptr;
    }
    return std::move(u.value());
  }
};

inline BlockLayout layout_of(uint64_t bytes, DType dtype = DType::kF16, Codec codec = Codec::kRaw) {
  BlockLayout l;
  TensorLayout t;
  t.name = "kv";
  t.dtype = dtype;
  t.codec = codec;
  t.shape = {bytes / dtype_size(dtype)};
  t.bytes = t.raw_bytes = bytes;
  l.tensors.push_back(t);
  l.total_bytes = bytes;
  return l;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int exp = int((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = (x >> 13) & 0x3ff;
  if (exp <= 0) return uint16_t(sign);
  if (exp >= 31) return uint16_t(sign | 0x7bff);
  return uint16_t(sign | (exp << 10) | mant);
}

// N(0,1) fp16 values (odd sizes get a trailing random byte).
inline std::vector<std::byte> normal_fp16(size_t bytes, uint64_t seed) {
  std::vector<std::byte> v(bytes);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    uint16_t h = f32_to_f16(nd(rng));
    std::memcpy(&v[i], &h, 2);
  }
  if (bytes % 2) v.back() = std::byte(rng());
  return v;
}

inline std::vector<std::byte> random_bytes(size_t bytes, uint64_t seed) {
  std::vector<std::byte> v(bytes);
  std::mt19937_64 rng(seed);
  for (auto& b : v) b = std::byte(rng());
  return v;
}

inline BlockKey key_of(uint64_t i) {
  return {i * 0x9e3779b97f4a7c15ull + 1, i};
}

// write() and wait for done: returns the enqueue status if it failed, else done's status.
inline Status put(DiskTier& t, const BlockKey& k, const BlockLayout& l,
                  std::span<const std::byte> p, bool compress = true, std::string_view ns = "m") {
  std::promise<Status> pr;
  auto f = pr.get_future();
  Status s = t.write(ns, k, l, p, compress, [&pr](Status st) { pr.set_value(std::move(st)); });
  if (!s) return s;
  return f.get();
}

inline Status get(DiskTier& t, const DiskEntry& e, std::vector<std::byte>& out) {
  out.assign(e.payload_bytes, std::byte{0});
  std::promise<Status> pr;
  auto f = pr.get_future();
  t.read(e, out, [&pr](Status st) { pr.set_value(std::move(st)); });
  return f.get();
}

inline Status get(DiskTier& t, const BlockKey& k, std::vector<std::byte>& out,
                  std::string_view ns = "m") {
  auto e = t.find(ns, k);
  if (!e) return error(Errc::kNotFound, "not indexed");
  return get(t, *e, out);
}

}  // namespace kvtier::testing
