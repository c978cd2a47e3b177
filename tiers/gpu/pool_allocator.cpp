#include "tiers/gpu/pool_allocator.h"

#include <string>

namespace kvtier::gpu {
namespace {

constexpr uint64_t round_up(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

}  // namespace

PoolAllocator::PoolAllocator(uint64_t size) : size_(size) {
  const uint64_t usable = size / kAlignment * kAlignment;
  if (usable > 0) add_free(0, usable);
}

void PoolAllocator::add_free(uint64_t offset, uint64_t bytes) {
  free_by_offset_.emplace(offset, bytes);
  free_by_size_.emplace(bytes, offset);
  free_bytes_ += bytes;
}

void PoolAllocator::remove_free(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_bytes_ -= it->second;
  free_by_offset_.erase(it);
}

uint64_t PoolAllocator::largest_free() const {
  return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
}

Result<uint64_t> PoolAllocator::allocate(uint64_t bytes) {
  if (bytes == 0) return error(Errc::kInvalidArgument, "pool allocation of 0 bytes");
  if (bytes > size_) {
    return error(Errc::kNoSpace,
                 std::to_string(bytes) + " bytes exceed the pool (" + std::to_string(size_) + ")");
  }
  const uint64_t need = round_up(bytes, kAlignment);
  auto fit = free_by_size_.lower_bound({need, 0});
  if (fit == free_by_size_.end()) {
    return error(Errc::kNoSpace,
                 "no free range of " + std::to_string(need) + " bytes in the pool (largest " +
                     std::to_string(largest_free()) + ", " + std::to_string(free_bytes_) +
                     " free in " + std::to_string(free_ranges()) + " ranges)");
  }
  const auto [length, offset] = *fit;
  remove_free(free_by_offset_.find(offset));
  if (length > need) add_free(offset + need, length - need);
  allocated_.emplace(offset, need);
  return offset;
}

void PoolAllocator::deallocate(uint64_t offset) {
  auto a = allocated_.find(offset);
  if (a == allocated_.end()) {
    ++bad_frees_;
    return;
  }
  const uint64_t end = offset + a->second;
  uint64_t start = offset;
  allocated_.erase(a);
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      start = prev->first;
      remove_free(prev);  // `next` stays valid: map iterators survive other erasures
    }
  }
  uint64_t merged_end = end;
  if (next != free_by_offset_.end() && next->first == end) {
    merged_end = end + next->second;
    remove_free(next);
  }
  add_free(start, merged_end - start);
}

}  // namespace kvtier::gpu
