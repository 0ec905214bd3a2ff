// Pure TCP acknowledgements merged within a batch.
#include "vpm/ack_merge.hpp"

#include <algorithm>

#include "vpm/checksum.hpp"
#include "vpm/packet.hpp"

namespace vpm {

namespace {

constexpr uint8_t kAckOnly = 0x10;
constexpr uint8_t kOptEnd = 0, kOptNop = 1, kOptSack = 5;

// True when the TCP options hold SACK blocks (or cannot be read).
bool has_sack(std::span<const uint8_t> options) {
  for (size_t at = 0; at < options.size();) {
    uint8_t kind = options[at];
    if (kind == kOptEnd) return false;
    if (kind == kOptNop) {
      ++at;
      continue;
    }
    if (at + 1 >= options.size() || options[at + 1] < 2) return true;
    if (kind == kOptSack) return true;
    at += options[at + 1];
  }
  return false;
}

}  // namespace

bool AckMerger::take(std::span<uint8_t> packet) {
  if (packet.size() > Held{}.bytes.size()) return false;
  PacketView v;
  if (parse_packet(packet, v) != Drop::none || v.proto != ipproto::tcp || !v.has_l4 || v.fragment)
    return false;
  const uint8_t* tcp = v.l4_ptr();
  size_t header = static_cast<size_t>(tcp[12] >> 4) * 4;
  if (tcp[13] != kAckOnly || v.l4_len() != header || has_sack({tcp + 20, header - 20}))
    return false;
  uint32_t ack = load32(tcp + 8);
  IpAddr src = v.src(), dst = v.dst();
  uint16_t sport = v.src_port(), dport = v.dst_port();
  // The connection's latest held ACK, if it is the last thing held for it.
  auto it = std::find_if(held_.rbegin(), held_.rend(), [&](const Held& h) {
    return h.sport == sport && h.dport == dport && h.src == src && h.dst == dst;
  });
  Held* h = nullptr;
  if (it != held_.rend() && static_cast<int32_t>(ack - it->ack) > 0 &&
      ack - it->first_ack <= kMaxStretch) {
    h = &*it;
    ++merged_;
  } else {
    if (held_.size() >= kMaxHeld) return false;
    h = &held_.emplace_back();
    h->src = src;
    h->dst = dst;
    h->sport = sport;
    h->dport = dport;
    h->first_ack = ack;
  }
  h->ack = ack;
  h->len = packet.size();
  std::copy(packet.begin(), packet.end(), h->bytes.begin());
  return true;
}

}  // namespace vpm
