// Pure TCP acknowledgements held within one batch of device input, and
// merged per connection.
//
// A client that is sending reaches the TUN packet by packet when nothing
// on its path gathers segments (no GRO). lwIP acknowledges every second
// segment, and each acknowledgement is a write to the device in which the
// kernel also carries it to the client. Within one batch of packets read
// from the device, a later cumulative acknowledgement of the same
// connection makes an earlier one redundant, as a receiver with GRO
// acknowledges a train once. What is held keeps its order with everything
// else: before a packet that is not merged is written, flush() writes what
// is held.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vpm/address.hpp"

namespace vpm {

class AckMerger {
 public:
  // A merged acknowledgement acknowledges at most this many bytes more than
  // the first one it replaced (about a GRO train): the sender's clock keeps
  // ticking.
  static constexpr uint32_t kMaxStretch = 65535;
  static constexpr size_t kMaxHeld = 64;  // connections with an ACK held
  // ACKs with SACK blocks one held ACK may stand for (Linux's tcp_comp_sack_nr).
  static constexpr uint8_t kMaxSacksMerged = 44;

  // Takes `packet` (a complete IP packet, as it will be written) when it is
  // a pure ACK: TCP, no payload, only the ACK flag, options that can be
  // read. It replaces the ACK held for its connection when it acknowledges
  // more (within kMaxStretch), or, when both carry SACK blocks (a hole at
  // the receiver), as much or more: a SACK-capable sender counts SACKed
  // segments, not duplicate ACKs. A duplicate ACK without SACK blocks
  // counts towards the sender's fast retransmit: it is held after the
  // others. False when `packet` is anything else, or there is no room:
  // the caller then flushes and writes it itself.
  bool take(std::span<uint8_t> packet);
  // Hands what is held to `write(std::span<uint8_t>)`, oldest first.
  template <class Write>
  void flush(Write&& write) {
    for (Held& h : held_) write(std::span<uint8_t>(h.bytes.data(), h.len));
    held_.clear();
  }
  bool empty() const { return held_.empty(); }
  // Acknowledgements replaced by a later one, never written.
  uint64_t merged() const { return merged_; }

 private:
  struct Held {
    IpAddr src, dst;
    uint16_t sport = 0, dport = 0;
    uint32_t first_ack = 0;  // of the first ACK held for it: the stretch starts there
    uint32_t ack = 0;
    bool sack = false;                 // it carries SACK blocks
    uint8_t sacks_merged = 0;          // ACKs with SACK blocks it replaced
    std::array<uint8_t, 120> bytes{};  // IPv6 + TCP with 40 bytes of options at most
    size_t len = 0;
  };
  std::vector<Held> held_;
  uint64_t merged_ = 0;
};

}  // namespace vpm
