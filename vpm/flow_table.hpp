// The flow table: one Flow per client connection or UDP session, keyed by
// the TUN-side 5-tuple (client address:port, virtual address:p1, protocol).
//
// Theory of operation: open addressing with linear probing and backward-shift
// deletion (no tombstones), so lookups stay short however many flows come and
// go. The table doubles when half full, up to a capacity fixed by max_flows;
// insert() beyond max_flows fails and the caller refuses the connection.
//
// Memory: a slot is a 4-byte hash tag plus a 96-byte Flow; the load factor is
// kept at or below 1/2, so a flow costs at most ~200 bytes and the whole table
// at most 200 * max_flows bytes (13 MiB for the default 65536).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "vpm/address.hpp"

namespace vpm {

struct FlowKey {
  IpAddr client;
  IpAddr vaddr;
  uint16_t client_port = 0;
  uint16_t p1 = 0;
  uint8_t proto = 0;
  uint8_t pad_[3] = {};  // kept zero: keys are compared and hashed as bytes

  bool operator==(const FlowKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
static_assert(sizeof(FlowKey) == 40);

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

struct Flow {
  FlowKey key;
  uint64_t created_ms = 0;
  uint64_t last_ms = 0;
  uint64_t packets[2] = {0, 0};  // [0] client -> vaddr, [1] vaddr -> client
  uint64_t bytes[2] = {0, 0};
  uint16_t p2 = 0;
  uint16_t listen = 0;  // index into Ruleset::listens
  uint16_t app = 0;     // index into Config::apps
  FlowState state = FlowState::established;
  uint8_t tcp_seen = 0;  // FlowTcp bits
};
static_assert(sizeof(Flow) == 96);

namespace flow_tcp {
inline constexpr uint8_t syn_in = 1, syn_out = 2, fin_in = 4, fin_out = 8, seen_in = 16,
                         seen_out = 32;
}

class FlowTable {
 public:
  explicit FlowTable(uint32_t max_flows);

  Flow* find(const FlowKey& key);
  // Inserts a new flow for `key` (which must not be present). Returns nullptr
  // when the table holds max_flows already.
  Flow* insert(const FlowKey& key);
  void erase(Flow* flow);

  size_t size() const { return size_; }
  uint32_t max_flows() const { return max_flows_; }

  // Visits up to `budget` slots from where the last sweep stopped, erasing the
  // flows for which `expired(flow)` is true (after calling `on_erase(flow)`).
  template <typename Expired, typename OnErase>
  void sweep(size_t budget, Expired expired, OnErase on_erase);

  template <typename Fn>
  void for_each(Fn fn) const {
    for (size_t i = 0; i < tags_.size(); ++i)
      if (tags_[i]) fn(flows_[i]);
  }

 private:
  static uint32_t hash(const FlowKey& key);
  void grow();
  void erase_at(size_t i);

  std::vector<uint32_t> tags_;  // 0 = empty, else hash | 1
  std::vector<Flow> flows_;
  size_t mask_ = 0;
  size_t size_ = 0;
  size_t cursor_ = 0;
  uint32_t max_flows_;
};

template <typename Expired, typename OnErase>
void FlowTable::sweep(size_t budget, Expired expired, OnErase on_erase) {
  if (tags_.empty()) return;
  budget = budget < tags_.size() ? budget : tags_.size();
  for (size_t n = 0; n < budget; ++n) {
    size_t i = cursor_ & mask_;
    // After an erase, backward shift may move another flow into slot i: look again.
    while (tags_[i] && expired(flows_[i])) {
      on_erase(flows_[i]);
      erase_at(i);
    }
    cursor_ = (cursor_ + 1) & mask_;
  }
}

}  // namespace vpm
