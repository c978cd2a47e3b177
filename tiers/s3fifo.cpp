#include "tiers/s3fifo.h"

namespace kvtier {

S3Fifo::S3Fifo(uint64_t capacity_bytes, double small_ratio, size_t ghost_entries, NodeTraits traits)
    : small_target_bytes_(static_cast<uint64_t>(capacity_bytes * small_ratio)),
      ghost_capacity_(ghost_entries),
      traits_(traits) {}

void S3Fifo::push(List& to, S3FifoNode& node) {
  node.in_main = (&to == &main_);
  (node.in_main ? main_bytes_ : small_bytes_) += traits_.bytes(node);
  to.push_back(node);
}

void S3Fifo::insert(S3FifoNode& node) {
  node.freq = 0;
  auto it = ghost_set_.find(traits_.key(node));
  if (it != ghost_set_.end()) {
    ghost_set_.erase(it);  // its slot in ghost_fifo_ ages out on its own
    push(main_, node);
  } else {
    push(small_, node);
  }
}

void S3Fifo::erase(S3FifoNode& node) {
  if (!node.is_linked()) return;
  if (node.in_main) {
    main_.erase(main_.iterator_to(node));
    main_bytes_ -= traits_.bytes(node);
  } else {
    small_.erase(small_.iterator_to(node));
    small_bytes_ -= traits_.bytes(node);
  }
}

void S3Fifo::clear() {
  small_.clear();
  main_.clear();
  small_bytes_ = main_bytes_ = 0;
}

void S3Fifo::remember_ghost(const NsKey& key) {
  if (ghost_capacity_ == 0) return;
  ghost_fifo_.push_back(key);
  ghost_set_.insert(key);
  while (ghost_fifo_.size() > ghost_capacity_) {
    auto it = ghost_set_.find(ghost_fifo_.front());
    if (it != ghost_set_.end()) ghost_set_.erase(it);
    ghost_fifo_.pop_front();
  }
}

S3FifoNode* S3Fifo::evict(const std::function<bool(const S3FifoNode&)>& pinned) {
  // Terminates: every step that is not a pinned rotation lowers the total frequency or
  // promotes a node from small to main (both bounded), and a queue whose every node was
  // just rotated as pinned is not picked again until something else changes.
  size_t small_run = 0;  // consecutive pinned rotations in small_
  size_t main_run = 0;
  for (;;) {
    bool small_ok = !small_.empty() && small_run < small_.size();
    bool main_ok = !main_.empty() && main_run < main_.size();
    if (!small_ok && !main_ok) return nullptr;
    bool from_small = small_ok && (small_bytes_ >= small_target_bytes_ || !main_ok);
    List& q = from_small ? small_ : main_;
    S3FifoNode& n = q.front();
    q.pop_front();
    (from_small ? small_bytes_ : main_bytes_) -= traits_.bytes(n);
    if (pinned(n)) {
      push(q, n);  // leased: rotate to the tail; not a victim now
      ++(from_small ? small_run : main_run);
      continue;
    }
    small_run = main_run = 0;
    if (from_small) {
      if (n.freq >= 1) {
        n.freq = 0;
        push(main_, n);  // hit at least once while in small: promote
        continue;
      }
      remember_ghost(traits_.key(n));
      return &n;
    }
    if (n.freq > 0) {
      --n.freq;
      push(main_, n);  // reinsertion
      continue;
    }
    return &n;
  }
}

}  // namespace kvtier
