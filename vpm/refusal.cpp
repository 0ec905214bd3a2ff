// TCP RST and ICMP port-unreachable construction for refused packets.
#include "vpm/refusal.hpp"

#include <algorithm>
#include <cstring>

#include "vpm/checksum.hpp"
#include "vpm/packet.hpp"

namespace vpm {

namespace {

void put32(uint8_t* p, uint32_t v) {
  store16(p, static_cast<uint16_t>(v >> 16));
  store16(p + 2, static_cast<uint16_t>(v));
}

// IP header answering `v`: source and destination swapped, no options.
size_t reply_header(const PacketView& v, uint8_t proto, size_t l4_len, std::vector<uint8_t>& out) {
  const uint8_t* in = v.bytes.data();
  if (v.v6) {
    out.assign(40 + l4_len, 0);
    out[0] = 0x60;
    store16(&out[4], static_cast<uint16_t>(l4_len));
    out[6] = proto;
    out[7] = 64;
    std::memcpy(&out[8], in + 24, 16);
    std::memcpy(&out[24], in + 8, 16);
    return 40;
  }
  out.assign(20 + l4_len, 0);
  out[0] = 0x45;
  store16(&out[2], static_cast<uint16_t>(20 + l4_len));
  out[8] = 64;
  out[9] = proto;
  std::memcpy(&out[12], in + 16, 4);
  std::memcpy(&out[16], in + 12, 4);
  store16(&out[10], finish(sum_words({out.data(), 20})));
  return 20;
}

// Checksum over the pseudo-header of `out` (v4 or v6) and its L4 part.
uint16_t l4_sum(const std::vector<uint8_t>& out, bool v6, size_t l4, uint8_t proto) {
  size_t len = out.size() - l4;
  uint64_t sum = v6 ? sum_words({&out[8], 32}) : sum_words({&out[12], 8});
  sum += proto + len;
  return finish(sum_words({&out[l4], len}, sum));
}

}  // namespace

bool build_refusal(std::span<const uint8_t> refused, std::vector<uint8_t>& out) {
  out.clear();
  std::vector<uint8_t> copy(refused.begin(), refused.end());
  PacketView v;
  if (parse_packet(copy, v) != Drop::none || !v.has_l4) return false;
  if (v.proto == ipproto::tcp) {
    const uint8_t* t = v.l4_ptr();
    uint8_t flags = t[13];
    if (flags & 0x04) return false;  // never answer a RST
    size_t l4 = reply_header(v, ipproto::tcp, 20, out);
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
      put32(r + 8, load32(t + 4) + seg);  // ACK what they sent
      r[13] = 0x14;
    }
    store16(r + 16, l4_sum(out, v.v6, l4, ipproto::tcp));
    return true;
  }
  if (v.proto == ipproto::udp) {
    // Quote as much of the datagram as fits the minimum MTU of the family.
    size_t max_total = v.v6 ? 1280 : 576;
    size_t hdr = v.v6 ? 40 : 20;
    size_t quote = std::min(v.bytes.size(), max_total - hdr - 8);
    uint8_t proto = v.v6 ? ipproto::icmpv6 : ipproto::icmp;
    size_t l4 = reply_header(v, proto, 8 + quote, out);
    out[l4] = v.v6 ? 1 : 3;      // destination unreachable
    out[l4 + 1] = v.v6 ? 4 : 3;  // port unreachable
    std::memcpy(&out[l4 + 8], v.bytes.data(), quote);
    uint16_t sum =
        v.v6 ? l4_sum(out, true, l4, proto) : finish(sum_words({&out[l4], out.size() - l4}));
    store16(&out[l4 + 2], sum);
    return true;
  }
  return false;
}

}  // namespace vpm
