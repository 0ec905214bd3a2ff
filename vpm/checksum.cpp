// One's complement sums over byte spans.
#include "vpm/checksum.hpp"

#include <bit>
#include <cstring>

namespace vpm {

// The one's complement sum does not depend on byte order (RFC 1071 2.B):
// add native 32-bit words into 64 bits (no carry is lost before 2^32
// words), fold, and swap the 16-bit result into network order once.
uint64_t sum_words(std::span<const uint8_t> bytes, uint64_t acc) {
  const uint8_t* p = bytes.data();
  size_t n = bytes.size();
  uint64_t sum = 0;
  for (; n >= 4; p += 4, n -= 4) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    sum += w;
  }
  if (n >= 2) {
    uint16_t w;
    std::memcpy(&w, p, 2);
    sum += w;
    p += 2;
    n -= 2;
  }
  uint16_t folded = fold(sum);
  if constexpr (std::endian::native == std::endian::little)
    folded = static_cast<uint16_t>(folded << 8 | folded >> 8);
  if (n) folded = fold(uint64_t{folded} + (uint32_t{*p} << 8));  // odd byte, zero-padded
  return acc + folded;
}

}  // namespace vpm
