// One's complement sums over byte spans.
#include "vpm/checksum.hpp"

namespace vpm {

uint64_t sum_words(std::span<const uint8_t> bytes, uint64_t acc) {
  size_t i = 0;
  for (; i + 1 < bytes.size(); i += 2) acc += load16(&bytes[i]);
  if (i < bytes.size()) acc += uint32_t{bytes[i]} << 8;
  return acc;
}

}  // namespace vpm
