// IPv4/IPv6 header parsing with bounds checks, and drop-reason names.
#include "vpm/packet.hpp"

#include <algorithm>

namespace vpm {

namespace {

struct DropInfo {
  const char* name;
  const char* description;
};

constexpr DropInfo kDrops[kDropCount] = {
    {"none", "not dropped"},
    {"ip_truncated", "shorter than the fixed IP header"},
    {"ip_version", "IP version is neither 4 nor 6"},
    {"ipv4_header_length", "IPv4 header length below 20 bytes or past the packet"},
    {"ip_total_length", "IP length field disagrees with the bytes received"},
    {"ipv6_jumbogram", "IPv6 jumbogram (payload length 0) is not supported"},
    {"ipv6_ext_chain", "IPv6 extension headers run past the packet or are too many"},
    {"l4_truncated", "TCP/UDP/ICMP header cut short"},
    {"tiny_fragment", "first fragment too short to hold the ports and checksum"},
    {"tcp_header_length", "TCP data offset below 5 or past the segment"},
    {"udp_length", "UDP length field below 8 or past the datagram"},
    {"icmp_quote", "ICMP error quotes a packet too short or malformed to translate"},
    {"hidden_port", "client addressed a hidden port (p2) directly"},
    {"stack_used_p1", "stack side used a multiplexed p1 instead of its p2"},
    {"unassigned_p2", "stack side used a hidden port that no translation owns"},
    {"unmatched", "no app claims this client (unmatched = \"reset\")"},
    {"no_flow", "mid-connection packet for a translation that is not held"},
    {"port_wait", "new connection waiting for a free hidden port"},
    {"port_wait_timeout", "no hidden port became free within queue_timeout_ms"},
    {"table_full", "flow table is full (max_flows)"},
    {"coop_not_negotiated", "connection to a cooperative p2 that was not negotiated for it"},
    {"coop_late", "connection to a cooperative p2 after its negotiation's window"},
    {"coop_pending", "connection to a cooperative p2 whose acknowledgement is not in yet"},
};

// Minimum upper-layer bytes that must be present to translate: TCP needs its
// checksum (offset 16), UDP its 8-byte header, ICMP its 8-byte header.
size_t l4_min(uint8_t proto) {
  switch (proto) {
    case ipproto::tcp:
      return 20;
    case ipproto::udp:
      return 8;
    case ipproto::icmp:
    case ipproto::icmpv6:
      return 8;
    default:
      return 0;
  }
}

// Checks the upper-layer header of an outer packet once its offset is known.
Drop check_l4(PacketView& v) {
  if (!v.has_l4) return Drop::none;
  size_t need = l4_min(v.proto);
  if (v.l4_len() < need) return v.fragment ? Drop::tiny_fragment : Drop::l4_truncated;
  if (v.proto == ipproto::tcp) {
    size_t doff = static_cast<size_t>(v.l4_ptr()[12] >> 4) * 4;
    // Data offset must cover the fixed header; unfragmented, it must also fit.
    if (doff < 20 || (!v.fragment && doff > v.l4_len())) return Drop::tcp_header_length;
  } else if (v.proto == ipproto::udp && !v.fragment) {
    size_t len = load16(v.l4_ptr() + 4);
    // UDP length must cover its header and fit the datagram (IPv6 jumbo UDP excluded above).
    if (len < 8 || len > v.l4_len()) return Drop::udp_length;
  }
  return Drop::none;
}

bool is_ext_header(uint8_t nh) {
  switch (nh) {
    case ipproto::hopopts:
    case ipproto::routing:
    case ipproto::fragment:
    case ipproto::ah:
    case ipproto::dstopts:
    case ipproto::mobility:
    case ipproto::hip:
    case ipproto::shim6:
      return true;
    default:
      return false;
  }
}

// Walks the IPv6 extension-header chain starting after the fixed header.
// Sets proto/l4/fragment/has_l4. Returns false if the chain runs past `end`.
bool walk_ipv6_chain(PacketView& v, size_t end) {
  constexpr int kMaxExtHeaders = 16;  // a legitimate chain has a handful at most
  uint8_t nh = v.bytes[6];
  size_t off = 40;
  v.has_l4 = true;
  for (int i = 0; i < kMaxExtHeaders && is_ext_header(nh); ++i) {
    if (off + 8 > end) return false;
    const uint8_t* h = v.bytes.data() + off;
    size_t len = 0;
    if (nh == ipproto::fragment) {
      len = 8;
      v.fragment = true;
      uint16_t offset_field = load16(h + 2) & 0xfff8;
      if (offset_field != 0) v.has_l4 = false;  // a later fragment carries no ports
    } else if (nh == ipproto::ah) {
      len = (size_t{h[1]} + 2) * 4;
    } else {
      len = (size_t{h[1]} + 1) * 8;
    }
    nh = h[0];
    off += len;
    if (off > end) return false;
  }
  if (is_ext_header(nh)) return false;
  v.proto = nh;
  v.l4 = off;
  if (nh == ipproto::none) v.has_l4 = false;
  return true;
}

}  // namespace

const char* drop_name(Drop d) { return kDrops[static_cast<size_t>(d)].name; }
const char* drop_description(Drop d) { return kDrops[static_cast<size_t>(d)].description; }

bool is_icmp_error(bool v6, uint8_t type) {
  if (v6) return type >= 1 && type <= 4;  // unreachable, too big, time exceeded, parameter
  // unreachable, source quench, redirect, time exceeded, parameter problem
  return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

Drop parse_packet(std::span<uint8_t> buf, PacketView& out) {
  out = PacketView{};
  if (buf.empty()) return Drop::ip_truncated;
  uint8_t version = buf[0] >> 4;
  if (version == 4) {
    if (buf.size() < 20) return Drop::ip_truncated;
    size_t ihl = static_cast<size_t>(buf[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > buf.size()) return Drop::ipv4_header_length;
    size_t total = load16(&buf[2]);
    if (total < ihl || total > buf.size()) return Drop::ip_total_length;
    out.bytes = buf.first(total);
    out.proto = buf[9];
    out.l4 = ihl;
    uint16_t frag = load16(&buf[6]);
    bool more = frag & 0x2000;
    uint16_t offset = frag & 0x1fff;
    out.fragment = more || offset != 0;
    out.has_l4 = offset == 0;
    return check_l4(out);
  }
  if (version == 6) {
    if (buf.size() < 40) return Drop::ip_truncated;
    size_t payload = load16(&buf[4]);
    if (payload == 0) return Drop::ipv6_jumbogram;
    if (40 + payload > buf.size()) return Drop::ip_total_length;
    out.v6 = true;
    out.bytes = buf.first(40 + payload);
    if (!walk_ipv6_chain(out, out.bytes.size())) return Drop::ipv6_ext_chain;
    return check_l4(out);
  }
  return Drop::ip_version;
}

Drop parse_quoted(std::span<uint8_t> buf, bool expect_v6, PacketView& out) {
  out = PacketView{};
  if (buf.empty() || (buf[0] >> 4) != (expect_v6 ? 6 : 4)) return Drop::icmp_quote;
  out.bytes = buf;  // the quote ends where the ICMP message ends
  if (!expect_v6) {
    if (buf.size() < 20) return Drop::icmp_quote;
    size_t ihl = static_cast<size_t>(buf[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > buf.size()) return Drop::icmp_quote;
    out.proto = buf[9];
    out.l4 = ihl;
    uint16_t frag = load16(&buf[6]);
    out.fragment = (frag & 0x3fff) != 0;
    out.has_l4 = (frag & 0x1fff) == 0;
  } else {
    if (buf.size() < 40) return Drop::icmp_quote;
    out.v6 = true;
    if (!walk_ipv6_chain(out, buf.size())) return Drop::icmp_quote;
  }
  // RFC 792 guarantees 8 bytes of the quoted upper-layer header; ports need 4.
  if (out.has_l4 && out.l4_len() < 4) out.has_l4 = false;
  return Drop::none;
}

uint16_t announced_mss(const PacketView& v) {
  uint16_t fallback = v.v6 ? 1220 : 536;
  if (v.fragment || v.l4_len() < 20) return fallback;  // a SYN in fragments: not worth reading
  const uint8_t* tcp = v.l4_ptr();
  size_t end = std::min<size_t>(v.l4_len(), (tcp[12] >> 4) * 4u);
  for (size_t i = 20; i < end;) {
    uint8_t kind = tcp[i];
    if (kind == 0) break;  // end of options
    if (kind == 1) {       // no-op
      ++i;
      continue;
    }
    if (i + 1 >= end || tcp[i + 1] < 2 || i + tcp[i + 1] > end) break;
    if (kind == 2 && tcp[i + 1] == 4) return load16(tcp + i + 2);
    i += tcp[i + 1];
  }
  return fallback;
}

std::string describe_packet(std::span<uint8_t> packet) {
  PacketView v;
  if (parse_packet(packet, v) != Drop::none) return "malformed IP packet";
  auto ep = [](const IpAddr& a, uint16_t port) { return Endpoint{a, port}.str(); };
  std::string ends = v.has_l4 && (v.proto == ipproto::udp || v.proto == ipproto::tcp)
                         ? ep(v.src(), v.src_port()) + " > " + ep(v.dst(), v.dst_port())
                         : v.src().str() + " > " + v.dst().str();
  if (v.has_l4 && v.proto == ipproto::udp) return "udp " + ends;
  if (v.has_l4 && v.proto == ipproto::tcp) {
    // Flags as tcpdump writes them: S, F, R, P, and . for ACK.
    uint8_t f = v.l4_ptr()[13];
    std::string flags;
    for (auto [bit, c] : {std::pair{0x02, 'S'}, {0x01, 'F'}, {0x04, 'R'}, {0x08, 'P'}, {0x10, '.'}})
      if (f & bit) flags += c;
    return "tcp " + ends + " [" + flags + "]";
  }
  const char* name = v.proto == ipproto::icmp     ? "icmp"
                     : v.proto == ipproto::icmpv6 ? "icmp6"
                     : v.has_l4                   ? "proto"
                                                  : "fragment";
  return name + (" " + ends);
}

}  // namespace vpm
