// Internet checksums (RFC 1071) and their incremental update (RFC 1624).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace vpm {

inline uint16_t load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline void store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline uint32_t load32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

// Folds an accumulator into a 16-bit one's complement sum.
inline uint16_t fold(uint64_t sum) {
  sum = (sum & 0xffffffff) + (sum >> 32);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

// One's complement sum of bytes taken as big-endian 16-bit words; an odd
// trailing byte is padded with zero. Not folded, not inverted.
uint64_t sum_words(std::span<const uint8_t> bytes, uint64_t acc = 0);

// The checksum field value for data whose sum_words (pseudo-header included) is `sum`.
inline uint16_t finish(uint64_t sum) { return static_cast<uint16_t>(~fold(sum)); }

// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data
// changes from old_word to new_word: HC' = ~(~HC + ~m + m').
// The result equals a full recomputation. A field holding the non-canonical
// zero 0xFFFF comes back as 0x0000; both verify.
inline uint16_t update16(uint16_t check, uint16_t old_word, uint16_t new_word) {
  // Three 16-bit terms: at most 0x2FFFD, so two folds suffice.
  uint32_t sum = uint32_t{static_cast<uint16_t>(~check)} +
                 uint32_t{static_cast<uint16_t>(~old_word)} + new_word;
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

}  // namespace vpm
