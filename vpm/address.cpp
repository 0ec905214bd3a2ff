// Parsing and formatting of addresses, prefixes and endpoints.
#include "vpm/address.hpp"

#include <arpa/inet.h>

#include <charconv>

namespace vpm {

const char* proto_name(Proto p) { return p == Proto::tcp ? "tcp" : "udp"; }

bool IpAddr::is_v4() const {
  static constexpr std::array<uint8_t, 12> mapped{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(bytes.data(), mapped.data(), mapped.size()) == 0;
}

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) return std::nullopt;  // inet_pton would stop there
  std::string s(text);
  uint8_t buf[16];
  if (inet_pton(AF_INET, s.c_str(), buf) == 1) return v4(buf);
  if (inet_pton(AF_INET6, s.c_str(), buf) == 1) return v6(buf);
  return std::nullopt;
}

std::string IpAddr::str() const {
  char out[INET6_ADDRSTRLEN];
  if (is_v4())
    inet_ntop(AF_INET, &bytes[12], out, sizeof out);
  else
    inet_ntop(AF_INET6, bytes.data(), out, sizeof out);
  return out;
}

std::optional<Prefix> Prefix::parse(std::string_view text, std::string* why) {
  auto slash = text.find('/');
  auto addr = IpAddr::parse(text.substr(0, slash));
  if (!addr) {
    *why = "'" + std::string(text.substr(0, slash)) + "' is not an IPv4 or IPv6 address";
    return std::nullopt;
  }
  Prefix p{*addr, 0};
  p.len = p.max_len();
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    unsigned len = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty()) {
      *why = "prefix length '" + std::string(digits) + "' is not a number";
      return std::nullopt;
    }
    if (len > p.max_len()) {
      *why =
          "prefix length " + std::to_string(len) + " is longer than " + std::to_string(p.max_len());
      return std::nullopt;
    }
    p.len = static_cast<uint8_t>(len);
  }
  // Host bits under a prefix (10.0.0.5/24) are almost always a typo; say so.
  Prefix masked = p;
  unsigned bits = p.addr.is_v4() ? 96u + p.len : p.len;
  for (unsigned i = bits; i < 128; ++i)
    masked.addr.bytes[i / 8] = static_cast<uint8_t>(masked.addr.bytes[i / 8] & ~(0x80u >> (i % 8)));
  if (masked.addr != p.addr) {
    *why = "'" + std::string(text) + "' has host bits set; did you mean " + masked.str() + "?";
    return std::nullopt;
  }
  return p;
}

bool Prefix::contains(const IpAddr& a) const {
  if (a.is_v4() != addr.is_v4()) return false;
  unsigned bits = addr.is_v4() ? 96u + len : len;
  unsigned whole = bits / 8;
  if (std::memcmp(a.bytes.data(), addr.bytes.data(), whole) != 0) return false;
  unsigned rest = bits % 8;
  if (rest == 0) return true;
  auto mask = static_cast<uint8_t>(0xff00u >> rest);
  return (a.bytes[whole] & mask) == (addr.bytes[whole] & mask);
}

std::string Prefix::str() const { return addr.str() + "/" + std::to_string(len); }

std::optional<Endpoint> Endpoint::parse(std::string_view text, std::string* why) {
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      *why = "'" + std::string(text) + "' should look like [IPv6]:port";
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) {
      *why = "'" + std::string(text) + "' should look like address:port ([address]:port for IPv6)";
      return std::nullopt;
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  auto addr = IpAddr::parse(host);
  if (!addr) {
    *why = "'" + std::string(host) + "' is not an IPv4 or IPv6 address";
    return std::nullopt;
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value == 0 ||
      value > 65535) {
    *why = "port '" + std::string(port) + "' is not a number from 1 to 65535";
    return std::nullopt;
  }
  return Endpoint{*addr, static_cast<uint16_t>(value)};
}

std::string Endpoint::str() const {
  auto port_text = std::to_string(port);
  return addr.is_v4() ? addr.str() + ":" + port_text : "[" + addr.str() + "]:" + port_text;
}

socklen_t to_sockaddr(const Endpoint& ep, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (ep.addr.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(ep.port);
    std::memcpy(&sin->sin_addr, &ep.addr.bytes[12], 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(ep.port);
  std::memcpy(&sin6->sin6_addr, ep.addr.bytes.data(), 16);
  return sizeof(sockaddr_in6);
}

}  // namespace vpm
