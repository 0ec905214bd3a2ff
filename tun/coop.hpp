// Cooperative mode in the daemon (DESIGN.md "Cooperative mode"): both VPMs.
//
// Theory of operation. The messages and state machines are pure
// (vpm/coop_wire.hpp, vpm/coop.hpp); here they meet sockets and clocks.
//
// Server side (CoopServer, VPM a): the stack's negotiation endpoint on p1
// of each cooperative listen hands it what a client's VPM sends. Every
// message is opened with the shared key, its nonce taken once, then it
// goes to vpm::coop::Negotiations; the answers go back on the same
// connection, which carries any number of negotiations (the client's VPM
// keeps one per server). What is not our protocol (a plain client), fails
// its MAC, has expired or was seen before resets the connection. The
// engine asks admit() about each new connection to a cooperative p2.
//
//   client's VPM (b)                         server's VPM (a)
//   TCP to vaddr:p1 (once, kept) ---------->  negotiation endpoint on p1
//   Ask{client addr:port, vaddr:p1} ------->  rules pick the app: Offer
//   <------- Offer{p2, AIDs} (or Refuse)
//   Ack{AID} (or Refuse: AID not offered) ->  translation held kWindowMs
//   program's SYN: client addr:port -> vaddr:p2 (admitted once)
//
// Client side (CoopClient, VPM b): a program under `vpmtun exec` asks,
// through the library socket (tun/instances.hpp), to connect to one of its
// app's remotes; dial() negotiates on that server's link (opened on first
// use, closed after kLinkIdleMs unused) and reports the p2, or why not,
// within kDialMs. A link that breaks sends its unanswered Asks once more
// on a new link (a server that restarted), then they fail.
//
// Clocks: messages carry wall-clock expiries (the two daemons' clocks must
// agree within seconds); timeouts here use the monotonic clock.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "stack/stack.hpp"
#include "tun/log_budget.hpp"
#include "vpm/coop.hpp"

namespace tun {

uint64_t wall_ms();
// A new nonce and an expiry kMessageMs from now.
vpm::coop::Header fresh_header(uint64_t now_ms);
inline constexpr uint64_t kMessageMs = 10000;

// Messages that failed before reaching a state machine, by why.
struct CoopWireCounters {
  uint64_t plain_clients = 0;  // not our protocol on p1
  uint64_t bad_mac = 0;        // another key, or altered
  uint64_t expired = 0;        // past its expiry, or too far ahead (clocks apart)
  uint64_t replayed = 0;       // a nonce seen before
  uint64_t malformed = 0;
};
inline constexpr size_t kOutcomes = static_cast<size_t>(vpm::coop::Outcome::pending) + 1;

class CoopServer : public stack::Negotiator {
 public:
  CoopServer(const vpm::Ruleset& rules, std::vector<uint8_t> key);

  size_t heard(std::span<const uint8_t> stream, const vpm::Endpoint& peer,
               const vpm::Endpoint& local, std::vector<uint8_t>& reply, End& end) override;
  // A new connection to a cooperative p2 (the engine's Admission).
  vpm::coop::Outcome admit(const vpm::Endpoint& client, const vpm::IpAddr& vaddr, uint16_t p2,
                           uint32_t isn);

  // A SYN that overtook its own Ack (the engine said coop_pending; the
  // client's kernel may send the program's SYN before the Ack its VPM
  // wrote first): kept until the Ack is in, then released() for the
  // engine to see again, instead of the client waiting a second to
  // retransmit. At most kMaxHeld, each for kHeldMs.
  static constexpr size_t kMaxHeld = 1024;
  static constexpr uint64_t kHeldMs = 2000;
  void hold(std::span<const uint8_t> syn, uint64_t now_ms);
  // The SYNs whose Ack has come since the last call (and forgets stale ones).
  std::vector<std::vector<uint8_t>> released(uint64_t now_ms);

  std::vector<vpm::coop::Negotiations::Entry> entries() const {
    return negotiations_.entries(wall_ms());
  }
  const std::array<uint64_t, kOutcomes>& outcomes() const { return outcomes_; }
  const CoopWireCounters& wire() const { return wire_; }

 private:
  void refused(const vpm::Endpoint& peer, const std::string& why);

  std::vector<uint8_t> key_;
  vpm::coop::Negotiations negotiations_;
  vpm::coop::NonceCache nonces_;
  std::array<uint64_t, kOutcomes> outcomes_{};
  CoopWireCounters wire_;
  struct Held {
    vpm::Endpoint client;
    vpm::IpAddr vaddr;
    uint16_t p2;
    std::vector<uint8_t> syn;
    uint64_t since_ms;
  };
  std::deque<Held> held_;
  bool acked_ = false;  // an Ack came since released() last looked
  LogBudget log_{"cooperative", 10};
};

// How a dial ended, for the program (errno) and the log.
struct DialResult {
  enum Status : uint8_t { ok, refused, unreachable, timed_out } status = refused;
  uint16_t p2 = 0;
  std::string reason;
};

struct CoopClientCounters {
  uint64_t dials = 0;
  uint64_t negotiated = 0;
  uint64_t refused = 0;      // by the server, or an AID it did not offer
  uint64_t unreachable = 0;  // the link failed twice
  uint64_t timed_out = 0;
  uint64_t links_opened = 0;
};

class CoopClient {
 public:
  static constexpr uint64_t kDialMs = 3000;
  static constexpr uint64_t kLinkIdleMs = 15000;
  static constexpr size_t kMaxDials = 4096;  // in flight, all links together
  using Done = std::function<void(const DialResult&)>;

  CoopClient(stack::IoLoop& io, std::vector<uint8_t> key);
  ~CoopClient();
  CoopClient(const CoopClient&) = delete;
  CoopClient& operator=(const CoopClient&) = delete;

  // Negotiates for a program's connection from `client` to `server`
  // (vaddr:p1) as `aid`; `done` is called exactly once, maybe before
  // dial() returns.
  void dial(const vpm::Endpoint& client, const vpm::Endpoint& server, uint32_t aid, Done done);
  // Dials past kDialMs fail; idle links close (call now and then).
  void expire(uint64_t now_ms);

  const CoopClientCounters& counters() const { return counters_; }
  size_t links() const { return links_.size(); }
  size_t in_flight() const;

 private:
  struct Dial {
    vpm::coop::Ask ask;
    uint32_t aid;
    Done done;
    uint64_t deadline_ms;
    bool retried = false;
  };
  struct Link;
  Link* link_to(const vpm::Endpoint& server);
  void send(Link& l, const vpm::coop::Message& m);
  void ready(Link& l, uint32_t events);
  void heard(Link& l);
  void broken(Link& l, const std::string& why);
  void finish(Dial& d, DialResult r);
  void flush(Link& l);
  void watch(Link& l, uint32_t events);

  stack::IoLoop& io_;
  std::vector<uint8_t> key_;
  vpm::coop::NonceCache nonces_;
  std::map<vpm::Endpoint, std::unique_ptr<Link>> links_;
  CoopClientCounters counters_;
  LogBudget log_{"cooperative", 10};
};

}  // namespace tun
