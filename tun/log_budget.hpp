// At most N log lines a second for what anyone can cause (refusals of
// strangers' traffic); the rest are counted and summed up once the second
// is over.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <string>

namespace tun {

uint64_t monotonic_ms();

class LogBudget {
 public:
  LogBudget(const char* what, uint64_t per_second) : what_(what), per_second_(per_second) {}
  // Whether a line may be logged now.
  bool take() {
    uint64_t second = monotonic_ms() / 1000;
    if (second != second_) {
      if (suppressed_)
        spdlog::info("{}: {} more refusals not logged in the last second", what_, suppressed_);
      second_ = second, logged_ = 0, suppressed_ = 0;
    }
    if (logged_ < per_second_) return ++logged_, true;
    return ++suppressed_, false;
  }

 private:
  const char* what_;
  uint64_t per_second_;
  uint64_t second_ = 0, logged_ = 0, suppressed_ = 0;
};

}  // namespace tun
