// SYN cookies: answering a TCP SYN without keeping any state for it.
//
// Theory of operation. When more handshakes are pending than the stack
// should hold (a SYN flood from spoofed sources), the stack stops handing
// SYNs to lwIP and answers each with a SYN-ACK of its own whose sequence
// number is a cookie: a keyed hash (SipHash-2-4) of the 4-tuple and a
// 64-second time slot, with the client's MSS coded in its low 3 bits. A
// spoofed source never sees it, so only a real client can come back with
// an ACK of cookie + 1. That ACK proves the handshake: the stack then
// builds the SYN the client sent (sequence number from the ACK, MSS from
// the cookie) and gives lwIP the SYN and the ACK; lwIP's own initial
// sequence number is made to equal the cookie (its TCP_ISN hook), so lwIP's
// SYN-ACK, which the client already has, is not sent again. The price, as
// with Linux's cookies: no window scaling and no SACK on such a connection
// (our SYN-ACK does not offer them), and an MSS rounded down to a table.
// Slots: a cookie is good in the slot it was made in and the next one.
//
// Initial sequence numbers of ordinary connections follow RFC 6528: a
// 4-microsecond clock plus a keyed hash of the 4-tuple (isn()).
//
// Pure code: the caller supplies the key (random, per process) and the time.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vpm/address.hpp"

namespace vpm {

using SipKey = std::array<uint64_t, 2>;

// SipHash-2-4 of `data` under `key` (Aumasson and Bernstein, 2012).
uint64_t siphash24(const SipKey& key, std::span<const uint8_t> data);

// A TCP connection as lwIP sees it: the client and the virtual address:p2.
struct TcpTuple {
  IpAddr client, vaddr;
  uint16_t client_port = 0, vport = 0;
};

class SynCookies {
 public:
  explicit SynCookies(const SipKey& key) : key_(key) {}

  // The cookie for a SYN from `t` announcing `mss`, at `now_ms`.
  uint32_t make(const TcpTuple& t, uint16_t mss, uint64_t now_ms) const;
  // The MSS coded in `cookie` if it is one that make() gave `t` in this
  // slot or the last; nullopt otherwise.
  std::optional<uint16_t> check(const TcpTuple& t, uint32_t cookie, uint64_t now_ms) const;
  // RFC 6528 initial sequence number for an ordinary connection.
  uint32_t isn(const TcpTuple& t, uint64_t now_us) const;

 private:
  uint32_t hash(const TcpTuple& t, uint64_t salt) const;
  SipKey key_;
};

// The SYN-ACK answering `syn` (a stack-side TCP SYN, IPv4 or IPv6) with
// sequence number `seq`, a window of 65535 and an MSS option of `mss`.
// False (and `out` empty) if `syn` is not a parseable TCP SYN.
bool build_syn_ack(std::span<const uint8_t> syn, uint32_t seq, uint16_t mss,
                   std::vector<uint8_t>& out);
// The SYN that the client of `ack` (the ACK completing a cookie handshake)
// sent: same addresses and ports, sequence number one before the ACK's,
// its window, and an MSS option of `mss`.
bool build_opening_syn(std::span<const uint8_t> ack, uint16_t mss, std::vector<uint8_t>& out);

}  // namespace vpm
