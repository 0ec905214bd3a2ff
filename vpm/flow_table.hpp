// The flow table: one Flow per client connection or UDP session, keyed by
// the TUN-side 5-tuple (client address:port, virtual address:p1, protocol).
//
// Theory of operation: open addressing with linear probing and backward-shift
// deletion (no tombstones), so lookups stay short however many flows come and
// go. The table doubles when half full, up to a capacity fixed by max_flows;
// insert() beyond max_flows fails and the caller refuses the connection.
//
// Memory: a slot is a 64-byte Flow plus a 40-byte FlowStats; the load factor
// is kept at or below 1/2, so a flow costs at most ~210 bytes and the whole
// table at most 2 * next_pow2(max_flows) * 104 bytes (13 MiB for the default
// 65536).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vpm/address.hpp"
#include "vpm/packet.hpp"

namespace vpm {

struct FlowKey {
  IpAddr client;
  IpAddr vaddr;
  uint16_t client_port = 0;
  uint16_t p1 = 0;
  uint8_t proto = 0;
  uint8_t pad_[3] = {};  // kept zero: keys are compared and hashed as bytes

  // Sets the last word (client_port, p1, proto) with one 8-byte store: the
  // table reads the key as words, and a word read over smaller stores
  // waits for them.
  void set_ports(uint16_t cport, uint16_t p1_, uint8_t proto_) {
    static_assert(std::endian::native == std::endian::little);
    uint64_t tail = uint64_t{cport} | uint64_t{p1_} << 16 | uint64_t{proto_} << 32;
    std::memcpy(&client_port, &tail, sizeof tail);
  }
  // The i-th of the key's five 8-byte words, read in place (copying the
  // key to an array first makes the compiler spill and reload it).
  uint64_t word(size_t i) const {
    uint64_t w;
    std::memcpy(&w, reinterpret_cast<const char*>(this) + 8 * i, sizeof w);
    return w;
  }
  bool operator==(const FlowKey& o) const {
    return ((word(0) ^ o.word(0)) | (word(1) ^ o.word(1)) | (word(2) ^ o.word(2)) |
            (word(3) ^ o.word(3)) | (word(4) ^ o.word(4))) == 0;
  }
};
static_assert(sizeof(FlowKey) == 40 && offsetof(FlowKey, client_port) == 32);

// TCP progress as seen from both directions. Timeouts follow the state.
enum class FlowState : uint8_t {
  waiting,      // no p2 free yet (per-connection allocation)
  syn_sent,     // client SYN seen
  syn_recv,     // server SYN-ACK seen
  pickup,       // joined mid-connection; established once seen both ways
  established,  // handshake done, or UDP
  fin_wait,     // one side has sent FIN
  closed,       // both FINs, or a RST: lingers for timeouts.tcp_closed
};
const char* flow_state_name(FlowState s);

// The per-packet part of a flow: one 64-byte cache line, so a lookup costs
// one memory access (the hash tag sits beside the key it guards).
struct alignas(64) Flow {
  FlowKey key;
  uint64_t last_ms = 0;
  uint32_t tag = 0;  // the table's hash tag; 0 marks an empty slot
  uint16_t p2 = 0;
  uint16_t listen = 0;  // index into Ruleset::listens
  uint16_t app = 0;     // index into Config::apps
  FlowState state = FlowState::established;
  uint8_t seen = 0;  // flow_seen bits: TCP flags from each side; UDP: seen_out
  uint16_t mss = 0;  // TCP: the MSS the client's SYN announced
};
static_assert(sizeof(Flow) == 64);

// The rest: counters and age, in a parallel array. Updating them never
// delays the translation that follows.
struct FlowStats {
  uint64_t created_ms = 0;
  uint64_t packets[2] = {0, 0};  // [0] client -> vaddr, [1] vaddr -> client
  uint64_t bytes[2] = {0, 0};
};

namespace flow_seen {
inline constexpr uint8_t syn_in = 1, syn_out = 2, fin_in = 4, fin_out = 8, seen_in = 16,
                         seen_out = 32;
}

// A flow nobody has shown to be real: a TCP handshake not yet completed (or
// a connection joined mid-stream and not yet seen both ways), a UDP flow
// the virtual side never answered, or a connection still waiting for a
// port. Anyone can make these with spoofed source addresses, so they have
// short timeouts of their own and are the first evicted when the table is
// full (as conntrack's early drop evicts unassured entries).
inline bool unconfirmed(const Flow& f) {
  switch (f.state) {
    case FlowState::waiting:
    case FlowState::syn_sent:
    case FlowState::syn_recv:
    case FlowState::pickup:
      return true;
    case FlowState::established:
      return f.key.proto == ipproto::udp && !(f.seen & flow_seen::seen_out);
    default:
      return false;
  }
}

class FlowTable {
 public:
  explicit FlowTable(uint32_t max_flows);

  Flow* find(const FlowKey& key);
  // Inserts a new flow for `key` (which must not be present). Returns nullptr
  // when the table holds max_flows already.
  Flow* insert(const FlowKey& key);
  void erase(Flow* flow);
  FlowStats& stats(const Flow& flow) { return stats_[index(flow)]; }
  const FlowStats& stats(const Flow& flow) const { return stats_[index(flow)]; }

  size_t size() const { return size_; }
  uint32_t max_flows() const { return max_flows_; }

  // The oldest flow for which `pred(flow)` holds among the kEvictScan slots
  // from `near`'s home slot on (a bounded look, like conntrack's early
  // drop: with the table at most half full that is about 32 flows, at a
  // place set by the hash, so an attacker cannot aim at it). nullptr if none.
  static constexpr size_t kEvictScan = 64;
  template <typename Pred>
  Flow* oldest_near(const FlowKey& near, Pred pred);

  // Visits up to `budget` slots from where the last sweep stopped, erasing the
  // flows for which `expired(flow)` is true (after calling `on_erase(flow)`).
  template <typename Expired, typename OnErase>
  void sweep(size_t budget, Expired expired, OnErase on_erase);

  // fn(const Flow&, const FlowStats&) for every flow.
  template <typename Fn>
  void for_each(Fn fn) const {
    for (size_t i = 0; i < flows_.size(); ++i)
      if (flows_[i].tag) fn(flows_[i], stats_[i]);
  }
  // fn(Flow&) for every flow; fn may change anything but the key.
  template <typename Fn>
  void update_each(Fn fn) {
    for (auto& f : flows_)
      if (f.tag) fn(f);
  }

 private:
  static uint32_t hash(const FlowKey& key) {
    // Independent multiplies (no chain between words), then one final mix.
    uint64_t h = (key.word(0) * 0x9e3779b97f4a7c15ull) ^ (key.word(1) * 0xc2b2ae3d27d4eb4full) ^
                 (key.word(2) * 0x165667b19e3779f9ull) ^ (key.word(3) * 0xd6e8feb86659fd93ull) ^
                 (key.word(4) * 0xff51afd7ed558ccdull);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    // The tag's low bits pick the home slot, so they must stay as hashed; 0
    // marks an empty slot, so a zero hash becomes 2^31 (same home slot,
    // tables never reach 2^31 slots).
    auto tag = static_cast<uint32_t>(h);
    return tag != 0 ? tag : 0x80000000u;
  }
  void grow();
  void erase_at(size_t i);
  size_t index(const Flow& f) const { return static_cast<size_t>(&f - flows_.data()); }

  std::vector<Flow> flows_;
  std::vector<FlowStats> stats_;
  size_t mask_ = 0;
  size_t size_ = 0;
  size_t cursor_ = 0;
  uint32_t max_flows_;
};

template <typename Pred>
Flow* FlowTable::oldest_near(const FlowKey& near, Pred pred) {
  if (flows_.empty()) return nullptr;
  Flow* oldest = nullptr;
  size_t i = hash(near) & mask_;
  for (size_t n = 0; n < kEvictScan && n < flows_.size(); ++n, i = (i + 1) & mask_) {
    Flow& f = flows_[i];
    if (f.tag && pred(f) && (!oldest || f.last_ms < oldest->last_ms)) oldest = &f;
  }
  return oldest;
}

template <typename Expired, typename OnErase>
void FlowTable::sweep(size_t budget, Expired expired, OnErase on_erase) {
  if (flows_.empty()) return;
  budget = budget < flows_.size() ? budget : flows_.size();
  for (size_t n = 0; n < budget; ++n) {
    size_t i = cursor_ & mask_;
    // After an erase, backward shift may move another flow into slot i: look again.
    while (flows_[i].tag && expired(flows_[i])) {
      on_erase(flows_[i]);
      erase_at(i);
    }
    cursor_ = (cursor_ + 1) & mask_;
  }
}

}  // namespace vpm
