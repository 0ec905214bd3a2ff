// Building small IP packets (refusals, SYN cookie handshakes) from one we have.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vpm/packet.hpp"

namespace vpm {

// Writes into `out` an IP header of `v`'s family, without options, for an
// upper-layer part of `l4_len` zero bytes that follow it: addressed as `v`
// is (`reply` = false) or back to its sender (`reply` = true). Returns the
// offset of the upper-layer part.
size_t build_ip_header(const PacketView& v, bool reply, uint8_t proto, size_t l4_len,
                       std::vector<uint8_t>& out);

// The TCP/UDP/ICMPv6 checksum of the upper-layer part of `out` (at `l4`),
// pseudo-header included.
uint16_t l4_checksum(const std::vector<uint8_t>& out, bool v6, size_t l4, uint8_t proto);

inline void store32(uint8_t* p, uint32_t v) {
  store16(p, static_cast<uint16_t>(v >> 16));
  store16(p + 2, static_cast<uint16_t>(v));
}

}  // namespace vpm
