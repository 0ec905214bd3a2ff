// SYN cookies, RFC 6528 sequence numbers, and the packets of a cookie handshake.
#include "vpm/syn_cookie.hpp"

#include <cstring>

#include "vpm/checksum.hpp"
#include "vpm/ip_build.hpp"
#include "vpm/packet.hpp"

namespace vpm {

namespace {

uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

struct SipState {
  uint64_t v0, v1, v2, v3;
  void round() {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  }
  void absorb(uint64_t m) {
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
};

uint64_t load_le64(const uint8_t* p, size_t n) {
  uint64_t m = 0;
  for (size_t i = 0; i < n; ++i) m |= uint64_t{p[i]} << (8 * i);
  return m;
}

// MSS values a cookie can carry (3 bits): the largest not above the
// client's is used. Common Ethernet, tunnel, jumbo and loopback sizes.
constexpr uint16_t kCookieMss[8] = {536, 1220, 1360, 1440, 1460, 8940, 16344, 65483};
constexpr uint64_t kSlotMs = 64000;

constexpr uint8_t kSyn = 0x02, kAck = 0x10, kRst = 0x04;

// The TCP header and MSS option of a handshake packet, after its IP header.
void write_tcp(std::vector<uint8_t>& out, size_t l4, bool v6, uint16_t sport, uint16_t dport,
               uint32_t seq, uint32_t ack, uint8_t flags, uint16_t window, uint16_t mss) {
  uint8_t* t = &out[l4];
  store16(t, sport);
  store16(t + 2, dport);
  store32(t + 4, seq);
  store32(t + 8, ack);
  t[12] = 6 << 4;  // 24 bytes: the header and one option
  t[13] = flags;
  store16(t + 14, window);
  t[20] = 2;  // MSS
  t[21] = 4;
  store16(t + 22, mss);
  store16(t + 16, l4_checksum(out, v6, l4, ipproto::tcp));
}

// A parsed, unfragmented TCP packet with the flags in `want` among those in `mask`.
bool tcp_with(std::span<const uint8_t> packet, uint8_t mask, uint8_t want,
              std::vector<uint8_t>& copy, PacketView& v) {
  copy.assign(packet.begin(), packet.end());
  return parse_packet(copy, v) == Drop::none && v.has_l4 && !v.fragment &&
         v.proto == ipproto::tcp && v.l4_len() >= 20 && (v.l4_ptr()[13] & mask) == want;
}

}  // namespace

uint64_t siphash24(const SipKey& key, std::span<const uint8_t> data) {
  SipState s{key[0] ^ 0x736f6d6570736575ull, key[1] ^ 0x646f72616e646f6dull,
             key[0] ^ 0x6c7967656e657261ull, key[1] ^ 0x7465646279746573ull};
  size_t whole = data.size() / 8 * 8;
  for (size_t i = 0; i < whole; i += 8) s.absorb(load_le64(&data[i], 8));
  s.absorb(uint64_t{data.size() & 0xff} << 56 | load_le64(data.data() + whole, data.size() - whole));
  s.v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) s.round();
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

uint32_t SynCookies::hash(const TcpTuple& t, uint64_t salt) const {
  uint8_t in[44];
  std::memcpy(in, t.client.bytes.data(), 16);
  std::memcpy(in + 16, t.vaddr.bytes.data(), 16);
  store16(in + 32, t.client_port);
  store16(in + 34, t.vport);
  std::memcpy(in + 36, &salt, 8);
  return static_cast<uint32_t>(siphash24(key_, in));
}

uint32_t SynCookies::make(const TcpTuple& t, uint16_t mss, uint64_t now_ms) const {
  uint32_t index = 0;
  while (index < 7 && kCookieMss[index + 1] <= mss) ++index;
  return (hash(t, now_ms / kSlotMs) & ~7u) | index;
}

std::optional<uint16_t> SynCookies::check(const TcpTuple& t, uint32_t cookie,
                                          uint64_t now_ms) const {
  uint64_t slot = now_ms / kSlotMs;
  for (uint64_t s : {slot, slot - 1})
    if ((hash(t, s) & ~7u) == (cookie & ~7u)) return kCookieMss[cookie & 7];
  return std::nullopt;
}

uint32_t SynCookies::isn(const TcpTuple& t, uint64_t now_us) const {
  return static_cast<uint32_t>(now_us / 4) + hash(t, ~uint64_t{0});
}

bool build_syn_ack(std::span<const uint8_t> syn, uint32_t seq, uint16_t mss,
                   std::vector<uint8_t>& out) {
  out.clear();
  std::vector<uint8_t> copy;
  PacketView v;
  if (!tcp_with(syn, kSyn | kAck | kRst, kSyn, copy, v)) return false;
  const uint8_t* t = v.l4_ptr();
  size_t l4 = build_ip_header(v, true, ipproto::tcp, 24, out);
  write_tcp(out, l4, v.v6, load16(t + 2), load16(t), seq, load32(t + 4) + 1, kSyn | kAck, 0xffff,
            mss);
  return true;
}

bool build_opening_syn(std::span<const uint8_t> ack, uint16_t mss, std::vector<uint8_t>& out) {
  out.clear();
  std::vector<uint8_t> copy;
  PacketView v;
  if (!tcp_with(ack, kSyn | kAck | kRst, kAck, copy, v)) return false;
  const uint8_t* t = v.l4_ptr();
  size_t l4 = build_ip_header(v, false, ipproto::tcp, 24, out);
  write_tcp(out, l4, v.v6, load16(t), load16(t + 2), load32(t + 4) - 1, 0, kSyn,
            load16(t + 14), mss);
  return true;
}

}  // namespace vpm
