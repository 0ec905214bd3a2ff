// Pure TCP acknowledgements merged within a batch.
#include "vpm/ack_merge.hpp"

#include <algorithm>

#include "vpm/checksum.hpp"
#include "vpm/packet.hpp"

namespace vpm {

namespace {

constexpr uint8_t kAckOnly = 0x10;
constexpr uint8_t kOptEnd = 0, kOptNop = 1, kOptSack = 5;

enum class Options : uint8_t { plain, sack, unreadable };

Options read_options(std::span<const uint8_t> options) {
  bool sack = false;
  for (size_t at = 0; at < options.size();) {
    uint8_t kind = options[at];
    if (kind == kOptEnd) break;
    if (kind == kOptNop) {
      ++at;
      continue;
    }
    if (at + 1 >= options.size() || options[at + 1] < 2) return Options::unreadable;
    sack |= kind == kOptSack;
    at += options[at + 1];
  }
  return sack ? Options::sack : Options::plain;
}

}  // namespace

bool AckMerger::take(std::span<uint8_t> packet) {
  if (packet.size() > Held{}.bytes.size()) return false;
  PacketView v;
  if (parse_packet(packet, v) != Drop::none || v.proto != ipproto::tcp || !v.has_l4 || v.fragment)
    return false;
  const uint8_t* tcp = v.l4_ptr();
  size_t header = static_cast<size_t>(tcp[12] >> 4) * 4;
  if (tcp[13] != kAckOnly || v.l4_len() != header) return false;
  Options options = read_options({tcp + 20, header - 20});
  if (options == Options::unreadable) return false;
  bool sack = options == Options::sack;
  uint32_t ack = load32(tcp + 8);
  IpAddr src = v.src(), dst = v.dst();
  uint16_t sport = v.src_port(), dport = v.dst_port();
  // The connection's latest held ACK.
  auto it = std::find_if(held_.rbegin(), held_.rend(), [&](const Held& h) {
    return h.sport == sport && h.dport == dport && h.src == src && h.dst == dst;
  });
  bool merge = false;
  if (it != held_.rend() && ack - it->first_ack <= kMaxStretch) {
    auto advance = static_cast<int32_t>(ack - it->ack);
    // A cumulative ACK replaces an older one. SACK blocks replace those
    // of the same or an older ACK that had SACK blocks too (the latest
    // repeats the most recent ones), as Linux's SACK compression does,
    // up to kMaxSacksMerged at a time.
    merge = sack ? it->sack && advance >= 0 && it->sacks_merged < kMaxSacksMerged : advance > 0;
  }
  Held* h = nullptr;
  if (merge) {
    h = &*it;
    ++merged_;
    if (sack) ++h->sacks_merged;
  } else {
    if (held_.size() >= kMaxHeld) return false;
    h = &held_.emplace_back();
    h->src = src;
    h->dst = dst;
    h->sport = sport;
    h->dport = dport;
    h->first_ack = ack;
  }
  h->sack = sack;
  h->ack = ack;
  h->len = packet.size();
  std::copy(packet.begin(), packet.end(), h->bytes.begin());
  return true;
}

}  // namespace vpm
