// The translation engine: the one code path the daemon and `vpmtun replay` share.
//
// Theory of operation. There are two views of every packet:
//   TUN side   - what clients send and receive: the virtual address on port p1;
//   stack side - what the virtual endpoints see: the same address on port p2.
// to_stack() maps a TUN-side packet to its stack-side form, to_tun() the
// reverse. Each accepts traffic in both directions (client -> vaddr and
// vaddr -> client), so a capture of either side replays as a whole; the
// daemon calls to_stack() on what it reads from the TUN and to_tun() on what
// the stack emits.
//
// Only ports change, never addresses; checksums are updated incrementally.
// A flood from spoofed sources must not keep real clients out: flows that
// nobody has shown to be real (vpm::unconfirmed: half-open TCP, unanswered
// UDP) idle out after short timeouts of their own, and when the table is
// full, or no per-connection p2 is free, the oldest such flow near the new
// one's hash slot is ended to make room (FlowTable::oldest_near). Flows
// that completed a handshake or got an answer are never evicted.
//
// to_stack() is stateful: a client's first packet is classified to an app
// and given a p2 (per-app: the app's fixed p2; per-connection: the lowest
// free port of the listen's slice), and the translation is kept in the
// FlowTable until the flow ends or idles out. to_tun() needs no state to find
// p1 (see rules.hpp) and only updates the flow's counters and TCP state, so
// to_tun(to_stack(p)) == p byte for byte for every translated packet.
//
// Per-connection allocation with no free port: the flow waits (its packets
// are dropped as port_wait and the client's own retransmissions retry) for up
// to queue_timeout_ms, then it is refused. A refusal is a verdict; the daemon
// answers it with a TCP RST or an ICMP port unreachable.
//
// ICMP errors towards or from a virtual address have their quoted header
// translated like the packet they quote (RFC 5508), including the quoted
// TCP/UDP checksum when it was quoted, and the ICMP checksum fixed.
//
// Cooperative mode (vpm/coop.hpp). On a listen where a cooperative app
// listens, p1 is where the client's VPM negotiates: the packets of a client
// that no plain (non-cooperative) app takes pass untranslated to the
// stack's negotiation endpoint on p1. A cooperative app's p2 is reachable
// from the TUN only by the connections the negotiation admitted (admit(),
// set by the daemon): their packets pass untranslated both ways, tracked as
// flows keyed by p2. Everything else on that p2 is refused.
//
// The packet path never throws or allocates except when the flow table grows.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vpm/config.hpp"
#include "vpm/coop.hpp"
#include "vpm/flow_table.hpp"
#include "vpm/packet.hpp"
#include "vpm/port_pool.hpp"
#include "vpm/rules.hpp"

namespace vpm {

enum class Verdict : uint8_t {
  translated,  // ports rewritten; deliver
  passed,      // not ours to translate; deliver untouched
  dropped,     // discard silently (reason says why)
  refused,     // discard and tell the client (RST / port unreachable)
};
const char* verdict_name(Verdict v);

struct Result {
  Verdict verdict = Verdict::passed;
  Drop reason = Drop::none;
  uint16_t app = kNoApp;  // the app whose flow carried the packet, when known
  uint16_t mss = 0;       // towards the TUN, TCP: the client's MSS (0: unknown)
  // Makes the size 8: GCC then builds a Result in one register, where six
  // bytes were stored one field at a time and read back as a word, which
  // waited for the stores (about 10% of a packet's time).
  uint16_t padding = 0;
};

enum Side : uint8_t { to_stack_side = 0, to_tun_side = 1 };

struct Counters {
  uint64_t packets[2] = {0, 0};  // by Side
  uint64_t bytes[2] = {0, 0};
  uint64_t translated = 0;
  uint64_t passed = 0;
  uint64_t dropped = 0;
  uint64_t refused = 0;
  uint64_t by_reason[kDropCount] = {};  // dropped + refused, by reason (none stays 0)
  uint64_t flows_created = 0;
  uint64_t flows_ended = 0;  // expired or closed, removed from the table
  uint64_t port_waits = 0;   // connections that found no free port at first
  // Unconfirmed flows (vpm::unconfirmed) ended early to make room for a new
  // one: the table was at max_flows, or (per-connection) no p2 was free.
  uint64_t evicted_table_full = 0;
  uint64_t evicted_no_port = 0;
};

// Per app (index into Config::apps).
struct AppCounters {
  uint64_t flows = 0;       // flows (connections, UDP sessions) created
  uint64_t port_waits = 0;  // of those, how many found no free p2 at first
  uint64_t refused = 0;     // refused after waiting queue_timeout_ms for a p2
};

// Whether a new connection from `client` to vaddr:p2 was negotiated (Negotiations::admit).
// `isn`: the SYN's sequence number.
using Admission = std::function<coop::Outcome(const Endpoint& client, const IpAddr& vaddr,
                                              uint16_t p2, uint32_t isn)>;

// One worker's part of what the workers of a daemon split ([tun] queues):
// the flow table (max_flows) and, under per-connection allocation, each
// listen's slice of hidden ports. Per-app p2s come from the configuration
// and are the same in every worker.
struct Share {
  uint32_t index = 0, count = 1;
};

class Engine {
 public:
  // `cfg` must have come back from parse_config.
  explicit Engine(const Config& cfg, Share share = {});

  // Translate one packet in place. `packet` is a whole IP packet (link
  // padding after it is ignored); the caller owns it. `now_ms` is any
  // monotonic clock (capture time in replay).
  Result to_stack(std::span<uint8_t> packet, uint64_t now_ms);
  Result to_tun(std::span<uint8_t> packet, uint64_t now_ms);

  // Removes flows idle past their timeout, visiting at most `budget` slots
  // (call it often with a small budget, or rarely with a large one).
  void expire(uint64_t now_ms, size_t budget);

  // Takes the rules of a reload (vpm/reload.hpp): new flows follow them,
  // flows already held keep their app and p2. `app_of` maps each running
  // app to its index in `cfg`; the closed flows of an app mapped to kNoApp
  // end (an app with open flows must be kept).
  void reload(const Config& cfg, const std::vector<uint16_t>& app_of);
  // Cooperative mode: who decides on connections to cooperative p2s
  // (unset: nobody negotiated, every one is refused).
  void admit_with(Admission admit) { admit_ = std::move(admit); }
  // Flows not yet closed, per app: what merge_reload must keep.
  std::vector<size_t> flows_per_app() const;

  const Counters& counters() const { return counters_; }
  const std::vector<AppCounters>& app_counters() const { return app_counters_; }
  // Per listen, with per-connection allocation (empty with per-app).
  const std::vector<PortPool>& pools() const { return pools_; }
  const FlowTable& flows() const { return flows_; }
  const Ruleset& rules() const { return rules_; }

 private:
  struct Mapping {
    uint16_t port = 0;  // the port to write; 0 when `result` says otherwise
    Result result;
    Flow* flow = nullptr;  // the flow that holds the translation, if any
  };

  struct Ends;
  Ends ends(const PacketView& v) const;
  Result stack_l4(const PacketView& v, uint64_t now);
  Result tun_l4(const PacketView& v, uint64_t now);
  Result icmp_error(const PacketView& v, Side side);
  Mapping flow_p2(const FlowKey& key, const Listen& l, bool inbound, uint8_t tcp_flags,
                  uint64_t now);
  Mapping quoted_p2(const FlowKey& key, const Listen& l);
  Mapping reverse_p1(int vaddr, Proto proto, uint16_t port);
  Result coop_data(Ends& e, uint8_t tcp_flags, const PacketView& v, uint16_t app, uint64_t now);
  Flow* insert_flow(const FlowKey& key);
  std::optional<uint16_t> port_for(const FlowKey& key, uint16_t listen);
  void start_flow(Flow& f, uint8_t tcp_flags, bool inbound);
  void track(Flow& f, Proto proto, uint8_t tcp_flags, bool inbound, size_t bytes, uint64_t now);
  uint64_t timeout_ms(const Flow& f) const;
  void end_flow(Flow& f);
  Result count(Result r);
  PortPool pool_of(const Listen& l) const;  // this worker's part of its slice

  Ruleset rules_;
  Timeouts timeouts_;
  bool per_connection_;
  uint32_t queue_timeout_ms_;
  FlowTable flows_;
  Share share_;
  std::vector<PortPool> pools_;  // per listen, per-connection allocation only
  Counters counters_;
  std::vector<AppCounters> app_counters_;
  Admission admit_;
};

}  // namespace vpm
