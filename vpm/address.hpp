// IP addresses, prefixes and endpoints as the VPM compares and hashes them.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace vpm {

enum class Proto : uint8_t { tcp = 6, udp = 17 };

const char* proto_name(Proto p);

// An IPv4 or IPv6 address. IPv4 is held as an IPv4-mapped IPv6 address
// (::ffff:a.b.c.d) so both families compare, hash and mask the same way.
struct IpAddr {
  std::array<uint8_t, 16> bytes{};

  // Built on every packet: kept inline, and written as two 8-byte words,
  // the width the flow table reads them at.
  static IpAddr v4(const uint8_t* four) {
    IpAddr a;
    static constexpr uint8_t mapped[4] = {0, 0, 0xff, 0xff};
    uint8_t high[8];
    std::memcpy(high, mapped, 4);
    std::memcpy(high + 4, four, 4);
    std::memcpy(a.bytes.data() + 8, high, 8);
    return a;
  }
  static IpAddr v6(const uint8_t* sixteen) {
    IpAddr a;
    std::memcpy(a.bytes.data(), sixteen, 16);
    return a;
  }
  static std::optional<IpAddr> parse(std::string_view text);

  bool is_v4() const;
  std::string str() const;
  bool operator==(const IpAddr& o) const {
    uint64_t a[2], b[2];
    std::memcpy(a, bytes.data(), 16);
    std::memcpy(b, o.bytes.data(), 16);
    return ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0;
  }
  bool operator!=(const IpAddr& o) const { return !(*this == o); }
  bool operator<(const IpAddr& o) const { return bytes < o.bytes; }
};

// Address plus prefix length, counted in the address's own family
// (10.0.0.0/8 has len 8, not 104).
struct Prefix {
  IpAddr addr;
  uint8_t len = 0;

  // "10.200.1.0/24", "fd00::/64", or a bare address (a one-host prefix).
  // On failure returns nullopt and sets *why.
  static std::optional<Prefix> parse(std::string_view text, std::string* why);
  bool contains(const IpAddr& a) const;
  uint8_t max_len() const { return addr.is_v4() ? 32 : 128; }
  std::string str() const;
  bool operator==(const Prefix& o) const { return addr == o.addr && len == o.len; }
};

struct Endpoint {
  IpAddr addr;
  uint16_t port = 0;

  // "10.0.0.1:9000" or "[fd00::1]:9000".
  static std::optional<Endpoint> parse(std::string_view text, std::string* why);
  std::string str() const;
  bool operator==(const Endpoint& o) const { return addr == o.addr && port == o.port; }
  bool operator<(const Endpoint& o) const {
    return addr < o.addr || (addr == o.addr && port < o.port);
  }
};

// The socket address of an endpoint (sockaddr_in for IPv4, sockaddr_in6 for
// IPv6); returns its length.
socklen_t to_sockaddr(const Endpoint& ep, sockaddr_storage& ss);

}  // namespace vpm
