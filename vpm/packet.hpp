// Bounds-checked views over raw IPv4/IPv6 packets, and the reasons a packet is dropped.
//
// Theory of operation: parse_packet() checks a buffer once (version, header
// lengths, total length, extension-header chain, L4 header present) and records
// offsets into a PacketView; callers then read fields through accessors that
// return host byte order. Nothing here casts structs onto packet memory. A
// failed check returns a Drop reason; the caller counts it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "vpm/address.hpp"
#include "vpm/checksum.hpp"

namespace vpm {

// Why a packet did not make it through. Every value has a counter.
enum class Drop : uint8_t {
  none,
  ip_truncated,         // shorter than the fixed IP header
  ip_version,           // version nibble is neither 4 nor 6
  ipv4_header_length,   // IHL below 5 or past the end of the packet
  ip_total_length,      // total/payload length disagrees with the bytes received
  ipv6_jumbogram,       // payload length 0 (jumbograms cannot cross a TUN MTU)
  ipv6_ext_chain,       // extension header runs past the packet, or too many of them
  l4_truncated,         // TCP/UDP/ICMP header cut short in an unfragmented packet
  tiny_fragment,        // first fragment too short to hold ports and checksum (RFC 1858)
  tcp_header_length,    // TCP data offset below 5 or past the segment
  udp_length,           // UDP length field below 8 or past the datagram
  icmp_quote,           // ICMP error whose quoted packet is unusable for translation
  hidden_port,          // a client addressed a hidden port (p2) directly
  stack_used_p1,        // the stack sent from/to a multiplexed p1 instead of its p2
  unassigned_p2,        // the stack used a hidden port no translation owns
  unmatched,            // no app claims this client and unmatched = "reset"
  no_flow,              // mid-connection packet for a translation we do not hold
  port_wait,            // new connection waiting for a free p2; the client retransmits
  port_wait_timeout,    // no p2 became free within queue_timeout_ms
  table_full,           // the flow table is at max_flows
  coop_not_negotiated,  // a connection to a cooperative p2 nobody negotiated for that client
  coop_late,            // negotiated, but the connection came after its window
  coop_pending,         // negotiated, the acknowledgement not yet in: the client retransmits
  count_,
};
inline constexpr size_t kDropCount = static_cast<size_t>(Drop::count_);

const char* drop_name(Drop d);         // short identifier, e.g. "tiny_fragment"
const char* drop_description(Drop d);  // one line for people

namespace ipproto {
inline constexpr uint8_t hopopts = 0, icmp = 1, tcp = 6, udp = 17, routing = 43, fragment = 44,
                         ah = 51, icmpv6 = 58, none = 59, dstopts = 60, mobility = 135, hip = 139,
                         shim6 = 140;
}

// A parsed packet. Offsets index into `bytes`, which is trimmed to the IP
// datagram's own length (link padding after it is not part of the view).
struct PacketView {
  std::span<uint8_t> bytes;
  bool v6 = false;
  uint8_t proto = 0;      // upper-layer protocol after any IPv6 extension headers
  size_t l4 = 0;          // offset of the upper-layer header
  bool fragment = false;  // part of a fragmented datagram
  bool has_l4 = false;    // the upper-layer header starts in this packet (not a later fragment)

  // Inline: the engine reads them for every packet.
  IpAddr src() const { return v6 ? IpAddr::v6(bytes.data() + 8) : IpAddr::v4(bytes.data() + 12); }
  IpAddr dst() const { return v6 ? IpAddr::v6(bytes.data() + 24) : IpAddr::v4(bytes.data() + 16); }
  size_t l4_len() const { return bytes.size() - l4; }
  uint8_t* l4_ptr() const { return bytes.data() + l4; }
  uint16_t src_port() const { return load16(l4_ptr()); }
  uint16_t dst_port() const { return load16(l4_ptr() + 2); }
};

// Strict parse of a packet as received. On success returns Drop::none and
// fills `out`; TCP, UDP and ICMP headers are guaranteed present in full when
// has_l4 (a first fragment: at least the ports and the checksum).
Drop parse_packet(std::span<uint8_t> buf, PacketView& out);

// Lenient parse of the packet quoted inside an ICMP error (RFC 792 / 4443):
// its lengths may exceed what was quoted, and only 8 bytes of its upper-layer
// header need be present. has_l4 is set only when the ports are present.
Drop parse_quoted(std::span<uint8_t> buf, bool expect_v6, PacketView& out);

// The MSS a TCP SYN announces (RFC 9293 3.7.1); without the option, the
// default for its family: 536 (IPv4) or 1220 (IPv6, RFC 8200 minimum MTU).
// `v` must be TCP with has_l4.
uint16_t announced_mss(const PacketView& v);

// One line for people, as tcpdump would put it:
// "tcp 10.200.1.5:40000 > 10.99.0.10:9000 [S]", "icmp 10.200.1.5 > 10.99.0.10".
std::string describe_packet(std::span<uint8_t> packet);

// True for ICMP/ICMPv6 types that quote the offending packet after an 8-byte header.
bool is_icmp_error(bool v6, uint8_t type);

}  // namespace vpm
