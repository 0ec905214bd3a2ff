// Building the answer to a refused packet: a TCP RST, or an ICMP/ICMPv6
// port unreachable for UDP. Pure code; the daemon writes the result to the TUN.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace vpm {

// Writes into `out` the packet that tells the sender of `refused` (a TUN-side
// packet addressed to a virtual address) that nobody will answer:
//   TCP without RST  -> RST (RFC 9293 3.10.7.1: seq from its ACK, or ACK of its segment);
//   UDP              -> ICMP port unreachable / ICMPv6 port unreachable quoting it
//                       (at most 576 / 1280 bytes in all, RFC 1812 / RFC 4443).
// Returns false (and leaves `out` empty) when nothing should be sent: a RST,
// an unparseable packet, or anything else.
bool build_refusal(std::span<const uint8_t> refused, std::vector<uint8_t>& out);

}  // namespace vpm
