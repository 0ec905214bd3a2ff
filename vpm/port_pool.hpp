// PortPool: the hidden ports of one listen under per-connection allocation.
//
// A bitmap over [lo, hi]; acquire() hands out the lowest free port, so port
// use is predictable and a capture replays to the same p2s every time.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace vpm {

class PortPool {
 public:
  PortPool(uint16_t lo, uint16_t hi);

  std::optional<uint16_t> acquire();
  void release(uint16_t port);
  size_t in_use() const { return in_use_; }
  size_t capacity() const { return size_t{hi_} - lo_ + 1; }

 private:
  uint16_t lo_, hi_;
  std::vector<uint64_t> used_;  // bit set = in use
  size_t first_word_ = 0;       // no free bit in words before this one
  size_t in_use_ = 0;
};

}  // namespace vpm
