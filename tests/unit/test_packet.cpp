// Packet parsing: every malformed shape yields its drop reason; good shapes parse.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/packet.hpp"

using namespace testpkt;
using vpm::Drop;

namespace {

Bytes tcp4() { return build({"192.0.2.1", "192.0.2.10", 6, 40000, 9000}); }
Bytes udp6() { return build({"2001:db8::1", "2001:db8::10", 17, 40000, 9000, 0, {1, 2, 3}}); }

// Inserts an IPv6 extension header (8 bytes, next header from the base) after the fixed header.
Bytes with_ext6(Bytes p, uint8_t type, Bytes ext) {
  ext[0] = p[6];
  p[6] = type;
  p.insert(p.begin() + 40, ext.begin(), ext.end());
  put16(p, 4, static_cast<uint16_t>(get16(p, 4) + ext.size()));
  return p;
}

struct Case {
  const char* description;
  Bytes packet;
  Drop expected;
  bool has_l4;
};

}  // namespace

TEST_CASE("parse_packet verdicts") {
  Bytes short_tcp = tcp4();
  short_tcp.resize(30);
  put16(short_tcp, 2, 30);

  Bytes bad_ihl = tcp4();
  bad_ihl[0] = 0x44;
  Bytes long_total = tcp4();
  put16(long_total, 2, 100);
  Bytes small_total = tcp4();
  put16(small_total, 2, 10);
  Bytes bad_doff = tcp4();
  bad_doff[20 + 12] = 4 << 4;
  Bytes big_doff = tcp4();
  big_doff[20 + 12] = 15 << 4;
  Bytes bad_udp_len = udp6();
  put16(bad_udp_len, 40 + 4, 7);
  Bytes long_udp_len = udp6();
  put16(long_udp_len, 40 + 4, 200);
  Bytes jumbo = udp6();
  put16(jumbo, 4, 0);

  Bytes first_frag = tcp4();
  put16(first_frag, 6, 0x2000);  // MF, offset 0
  Bytes tiny_frag = first_frag;
  tiny_frag.resize(20 + 8);
  put16(tiny_frag, 2, 28);
  Bytes later_frag = tcp4();
  put16(later_frag, 6, 0x0003);  // offset 24 bytes
  Bytes padded = tcp4();
  padded.resize(padded.size() + 6, 0);  // Ethernet minimum-frame padding

  Bytes frag6_first = with_ext6(udp6(), 44, {0, 0, 0x00, 0x01, 0, 0, 0, 7});
  Bytes frag6_later = with_ext6(udp6(), 44, {0, 0, 0x00, 0x08, 0, 0, 0, 7});
  Bytes hbh_dst =
      with_ext6(with_ext6(udp6(), 60, {0, 0, 1, 4, 0, 0, 0, 0}), 0, {0, 0, 1, 4, 0, 0, 0, 0});
  Bytes ext_overrun = with_ext6(udp6(), 60, {0, 9, 1, 4, 0, 0, 0, 0});  // claims 80 bytes
  Bytes no_next = with_ext6(udp6(), 60, {0, 0, 1, 4, 0, 0, 0, 0});
  no_next[40] = 59;

  std::vector<Case> cases = {
      {"empty", {}, Drop::ip_truncated, false},
      {"three bytes", {0x45, 0, 0}, Drop::ip_truncated, false},
      {"version 5", Bytes(40, 0x50), Drop::ip_version, false},
      {"IPv4 IHL below 5", bad_ihl, Drop::ipv4_header_length, false},
      {"IPv4 total length past the buffer", long_total, Drop::ip_total_length, false},
      {"IPv4 total length below the header", small_total, Drop::ip_total_length, false},
      {"IPv4 TCP header cut short", short_tcp, Drop::l4_truncated, true},
      {"TCP data offset 4", bad_doff, Drop::tcp_header_length, true},
      {"TCP data offset past the segment", big_doff, Drop::tcp_header_length, true},
      {"UDP length 7", bad_udp_len, Drop::udp_length, true},
      {"UDP length past the datagram", long_udp_len, Drop::udp_length, true},
      {"IPv6 jumbogram", jumbo, Drop::ipv6_jumbogram, false},
      {"IPv6 extension header past the packet", ext_overrun, Drop::ipv6_ext_chain, false},
      {"IPv4 TCP", tcp4(), Drop::none, true},
      {"IPv4 TCP with link padding", padded, Drop::none, true},
      {"IPv4 first fragment", first_frag, Drop::none, true},
      {"IPv4 first fragment of 8 TCP bytes", tiny_frag, Drop::tiny_fragment, true},
      {"IPv4 later fragment", later_frag, Drop::none, false},
      {"IPv6 UDP", udp6(), Drop::none, true},
      {"IPv6 first fragment", frag6_first, Drop::none, true},
      {"IPv6 later fragment", frag6_later, Drop::none, false},
      {"IPv6 hop-by-hop then destination options", hbh_dst, Drop::none, true},
      {"IPv6 no next header", no_next, Drop::none, false},
  };
  for (auto& c : cases) {
    SECTION(c.description) {
      Bytes p = c.packet;
      vpm::PacketView v;
      Drop d = vpm::parse_packet(p, v);
      CHECK(vpm::drop_name(d) == std::string(vpm::drop_name(c.expected)));
      if (d == Drop::none) CHECK(v.has_l4 == c.has_l4);
    }
  }
}

TEST_CASE("parsed fields come back in host order") {
  Bytes p = udp6();
  vpm::PacketView v;
  REQUIRE(vpm::parse_packet(p, v) == Drop::none);
  CHECK(v.v6);
  CHECK(v.proto == 17);
  CHECK(v.l4 == 40);
  CHECK(v.src_port() == 40000);
  CHECK(v.dst_port() == 9000);
  CHECK(v.src() == addr("2001:db8::1"));
  CHECK(v.dst() == addr("2001:db8::10"));

  Bytes f = with_ext6(udp6(), 44, {0, 0, 0x00, 0x01, 0, 0, 0, 7});
  REQUIRE(vpm::parse_packet(f, v) == Drop::none);
  CHECK(v.fragment);
  CHECK(v.l4 == 48);
  CHECK(v.dst_port() == 9000);
}

TEST_CASE("quoted packets may be truncated") {
  Bytes q = tcp4();
  q.resize(28);  // IP header + 8 bytes of TCP: ports present, checksum not
  vpm::PacketView v;
  REQUIRE(vpm::parse_quoted(q, false, v) == Drop::none);
  CHECK(v.has_l4);
  CHECK(v.l4_len() == 8);
  q.resize(22);
  REQUIRE(vpm::parse_quoted(q, false, v) == Drop::none);
  CHECK_FALSE(v.has_l4);
  CHECK(vpm::parse_quoted(q, true, v) == Drop::icmp_quote);  // family must match the ICMP
}
