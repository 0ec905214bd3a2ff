// Lowest-free port allocation over a bitmap.
#include "vpm/port_pool.hpp"

namespace vpm {

PortPool::PortPool(uint16_t lo, uint16_t hi) : lo_(lo), hi_(hi) {
  size_t n = capacity();
  used_.assign((n + 63) / 64, 0);
  // Bits past hi in the last word are marked used so they are never handed out.
  if (n % 64) used_.back() = ~uint64_t{0} << (n % 64);
}

std::optional<uint16_t> PortPool::acquire() {
  for (size_t w = first_word_; w < used_.size(); ++w) {
    if (used_[w] == ~uint64_t{0}) continue;
    first_word_ = w;
    auto bit = static_cast<unsigned>(__builtin_ctzll(~used_[w]));
    used_[w] |= uint64_t{1} << bit;
    ++in_use_;
    return static_cast<uint16_t>(lo_ + w * 64 + bit);
  }
  first_word_ = used_.size();
  return std::nullopt;
}

void PortPool::release(uint16_t port) {
  if (port < lo_ || port > hi_) return;
  size_t off = size_t{port} - lo_;
  uint64_t bit = uint64_t{1} << (off % 64);
  if (!(used_[off / 64] & bit)) return;
  used_[off / 64] &= ~bit;
  --in_use_;
  if (off / 64 < first_word_) first_word_ = off / 64;
}

}  // namespace vpm
