// TCP RST and ICMP port-unreachable construction for refused packets.
#include "vpm/refusal.hpp"

#include <algorithm>
#include <cstring>

#include "vpm/checksum.hpp"
#include "vpm/ip_build.hpp"
#include "vpm/packet.hpp"

namespace vpm {

bool build_refusal(std::span<const uint8_t> refused, std::vector<uint8_t>& out) {
  out.clear();
  std::vector<uint8_t> copy(refused.begin(), refused.end());
  PacketView v;
  if (parse_packet(copy, v) != Drop::none || !v.has_l4) return false;
  if (v.proto == ipproto::tcp) {
    const uint8_t* t = v.l4_ptr();
    uint8_t flags = t[13];
    if (flags & 0x04) return false;  // never answer a RST
    size_t l4 = build_ip_header(v, true, ipproto::tcp, 20, out);
    uint8_t* r = &out[l4];
    store16(r, load16(t + 2));
    store16(r + 2, load16(t));
    r[12] = 5 << 4;
    if (flags & 0x10) {
      std::memcpy(r + 4, t + 8, 4);  // seq = their ACK
      r[13] = 0x04;
    } else {
      size_t doff = static_cast<size_t>(t[12] >> 4) * 4;
      uint32_t seg = static_cast<uint32_t>(v.l4_len() - std::min(doff, v.l4_len())) +
                     ((flags & 0x02) ? 1 : 0) + ((flags & 0x01) ? 1 : 0);
      store32(r + 8, load32(t + 4) + seg);  // ACK what they sent
      r[13] = 0x14;
    }
    store16(r + 16, l4_checksum(out, v.v6, l4, ipproto::tcp));
    return true;
  }
  if (v.proto == ipproto::udp) {
    // Quote as much of the datagram as fits the minimum MTU of the family.
    size_t max_total = v.v6 ? 1280 : 576;
    size_t hdr = v.v6 ? 40 : 20;
    size_t quote = std::min(v.bytes.size(), max_total - hdr - 8);
    uint8_t proto = v.v6 ? ipproto::icmpv6 : ipproto::icmp;
    size_t l4 = build_ip_header(v, true, proto, 8 + quote, out);
    out[l4] = v.v6 ? 1 : 3;      // destination unreachable
    out[l4 + 1] = v.v6 ? 4 : 3;  // port unreachable
    std::memcpy(&out[l4 + 8], v.bytes.data(), quote);
    uint16_t sum =
        v.v6 ? l4_checksum(out, true, l4, proto) : finish(sum_words({&out[l4], out.size() - l4}));
    store16(&out[l4 + 2], sum);
    return true;
  }
  return false;
}

}  // namespace vpm
