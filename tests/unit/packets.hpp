// Test helpers: build IPv4/IPv6 TCP/UDP/ICMP packets with correct checksums,
// computed here independently of vpm/checksum.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vpm/address.hpp"
#include "vpm/config.hpp"

namespace testpkt {

using Bytes = std::vector<uint8_t>;

// Naive RFC 1071 sum, byte by byte: the reference the engine is checked against.
inline uint16_t reference_checksum(const Bytes& data) {
  uint32_t sum = 0;
  for (size_t i = 0; i < data.size(); i += 2) {
    uint32_t hi = data[i];
    uint32_t lo = i + 1 < data.size() ? data[i + 1] : 0;
    sum += hi << 8 | lo;
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<uint16_t>(~sum & 0xffff);
}

inline void put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}
inline uint16_t get16(const Bytes& b, size_t at) {
  return static_cast<uint16_t>(b[at] << 8 | b[at + 1]);
}

inline vpm::IpAddr addr(const std::string& s) { return *vpm::IpAddr::parse(s); }

struct Spec {
  std::string src, dst;
  uint8_t proto = 6;  // 6 tcp, 17 udp, 1 icmp, 58 icmpv6
  uint16_t sport = 0, dport = 0;
  uint8_t tcp_flags = 0x02;
  Bytes payload;
  uint8_t icmp_type = 0, icmp_code = 0;
  uint32_t seq = 0x12000000, ack = 0;
};

// Checksum of an L4 segment with the pseudo-header of its family.
inline uint16_t l4_checksum(bool v6, const vpm::IpAddr& s, const vpm::IpAddr& d, uint8_t proto,
                            const Bytes& l4) {
  Bytes pseudo;
  auto append_addr = [&](const vpm::IpAddr& a) {
    if (v6)
      pseudo.insert(pseudo.end(), a.bytes.begin(), a.bytes.end());
    else
      pseudo.insert(pseudo.end(), a.bytes.begin() + 12, a.bytes.end());
  };
  append_addr(s);
  append_addr(d);
  if (v6) {
    uint32_t len = static_cast<uint32_t>(l4.size());
    for (int k = 3; k >= 0; --k) pseudo.push_back(static_cast<uint8_t>(len >> (8 * k)));
    pseudo.insert(pseudo.end(), {0, 0, 0, proto});
  } else {
    pseudo.insert(pseudo.end(), {0, proto, static_cast<uint8_t>(l4.size() >> 8),
                                 static_cast<uint8_t>(l4.size())});
  }
  pseudo.insert(pseudo.end(), l4.begin(), l4.end());
  return reference_checksum(pseudo);
}

// The L4 part of a spec, checksum field zero.
inline Bytes l4_bytes(const Spec& s) {
  Bytes l4;
  if (s.proto == 6) {
    l4.assign(20, 0);
    put16(l4, 0, s.sport);
    put16(l4, 2, s.dport);
    for (int k = 0; k < 4; ++k) {
      l4[4 + static_cast<size_t>(k)] = static_cast<uint8_t>(s.seq >> (24 - 8 * k));
      l4[8 + static_cast<size_t>(k)] = static_cast<uint8_t>(s.ack >> (24 - 8 * k));
    }
    l4[12] = 5 << 4;
    l4[13] = s.tcp_flags;
    put16(l4, 14, 65535);
  } else if (s.proto == 17) {
    l4.assign(8, 0);
    put16(l4, 0, s.sport);
    put16(l4, 2, s.dport);
    put16(l4, 4, static_cast<uint16_t>(8 + s.payload.size()));
  } else {
    l4.assign(8, 0);
    l4[0] = s.icmp_type;
    l4[1] = s.icmp_code;
  }
  l4.insert(l4.end(), s.payload.begin(), s.payload.end());
  return l4;
}

// Whole packet, all checksums correct.
inline Bytes build(const Spec& s) {
  vpm::IpAddr src = addr(s.src), dst = addr(s.dst);
  bool v6 = !src.is_v4();
  Bytes l4 = l4_bytes(s);
  size_t sum_at = s.proto == 6 ? 16 : s.proto == 17 ? 6 : 2;
  uint16_t sum = s.proto == 1 ? reference_checksum(l4) : l4_checksum(v6, src, dst, s.proto, l4);
  if (s.proto == 17 && sum == 0) sum = 0xffff;
  put16(l4, sum_at, sum);
  Bytes ip;
  if (v6) {
    ip.assign(40, 0);
    ip[0] = 0x60;
    put16(ip, 4, static_cast<uint16_t>(l4.size()));
    ip[6] = s.proto;
    ip[7] = 64;
    std::copy(src.bytes.begin(), src.bytes.end(), ip.begin() + 8);
    std::copy(dst.bytes.begin(), dst.bytes.end(), ip.begin() + 24);
  } else {
    ip.assign(20, 0);
    ip[0] = 0x45;
    put16(ip, 2, static_cast<uint16_t>(20 + l4.size()));
    ip[8] = 64;
    ip[9] = s.proto;
    std::copy(src.bytes.begin() + 12, src.bytes.end(), ip.begin() + 12);
    std::copy(dst.bytes.begin() + 12, dst.bytes.end(), ip.begin() + 16);
    put16(ip, 10, reference_checksum(ip));
  }
  ip.insert(ip.end(), l4.begin(), l4.end());
  return ip;
}

// True when the packet's L4 checksum (and, for ICMP errors, nothing else) verifies.
inline bool l4_checksum_ok(const Bytes& p) {
  bool v6 = (p[0] >> 4) == 6;
  size_t l4 = v6 ? 40 : static_cast<size_t>(p[0] & 15) * 4;
  uint8_t proto = v6 ? p[6] : p[9];
  Bytes seg(p.begin() + static_cast<long>(l4), p.end());
  vpm::IpAddr s = v6 ? vpm::IpAddr::v6(&p[8]) : vpm::IpAddr::v4(&p[12]);
  vpm::IpAddr d = v6 ? vpm::IpAddr::v6(&p[24]) : vpm::IpAddr::v4(&p[16]);
  if (proto == 17 && !v6 && get16(seg, 6) == 0) return true;
  // Summing over data that includes a correct checksum gives zero (or 0xFFFF's complement).
  uint16_t r = proto == 1 ? reference_checksum(seg) : l4_checksum(v6, s, d, proto, seg);
  return r == 0 || r == 0xffff;
}

// `p` (IPv4 TCP without options, as build() makes it) with `options`
// appended to its TCP header; lengths and checksums redone.
inline Bytes with_options(Bytes p, const Bytes& options) {
  p.insert(p.begin() + 40, options.begin(), options.end());
  p[32] = static_cast<uint8_t>(((20 + options.size()) / 4) << 4);
  put16(p, 2, static_cast<uint16_t>(p.size()));
  put16(p, 10, 0);
  put16(p, 10, reference_checksum(Bytes(p.begin(), p.begin() + 20)));
  put16(p, 36, 0);
  Bytes tcp(p.begin() + 20, p.end());
  put16(p, 36, l4_checksum(false, vpm::IpAddr::v4(&p[12]), vpm::IpAddr::v4(&p[16]), 6, tcp));
  return p;
}

// An ICMP error from `from` to `to` quoting `quoted` (whole), checksums correct.
inline Bytes icmp_error(const std::string& from, const std::string& to, const Bytes& quoted) {
  bool v6 = !addr(from).is_v4();
  Spec s{from, to, static_cast<uint8_t>(v6 ? 58 : 1)};
  s.icmp_type = v6 ? 1 : 3;
  s.icmp_code = v6 ? 4 : 3;
  s.payload = quoted;
  return build(s);
}

// Reading built or translated packets (IPv4 without options, or IPv6 without
// extension headers, as build() makes them and the stack sends them).
inline size_t l4_of(const Bytes& p) {
  return (p[0] >> 4) == 6 ? 40 : static_cast<size_t>(p[0] & 15) * 4;
}
inline uint32_t get32(const Bytes& b, size_t at) {
  return uint32_t{get16(b, at)} << 16 | get16(b, at + 2);
}
// The TCP or UDP payload.
inline Bytes payload_of(const Bytes& p) {
  size_t l4 = l4_of(p);
  size_t start =
      l4 + (p[(p[0] >> 4) == 6 ? 6 : 9] == 6 ? static_cast<size_t>(p[l4 + 12] >> 4) * 4 : 8);
  return Bytes(p.begin() + static_cast<long>(start), p.end());
}

// Parses a config for tests; fails the test with the errors on failure.
vpm::Config config(const std::string& toml);

}  // namespace testpkt
