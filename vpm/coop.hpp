// Cooperative mode's negotiation, both sides, as pure state machines
// (DESIGN.md "Cooperative mode"; the messages are vpm/coop_wire.hpp).
//
// Theory of operation.
//
// Server side (VPM a), one Negotiations per daemon:
//   Ask      -> Offer, and the offer is remembered (pending) until its expiry:
//               the AID of the app the client's rules choose on vaddr:p1 and
//               that app's p2. Refuse when vaddr:p1 is not cooperative, or no
//               app takes the client.
//   Ack      -> the translation is recorded (negotiated) for exactly that
//               client address:port, vaddr, p2 and AID, for kWindowMs. Refused
//               (and the offer forgotten): an Ack for no pending offer (never
//               made, expired, or already acknowledged: a replay), or one whose
//               client, server, p2 or AID differ from the offer's.
//   Refuse   -> the offer is forgotten (the client's VPM declined it).
//   admit()  -> a SYN to vaddr:p2 from client address:port is let in only
//               if negotiated and within its window; the translation is
//               used once, by one connection (a SYN retransmitted with the
//               same ISN is that connection), and shown as connected until
//               it would expire. Everything else on a p2 is refused (window_passed
//               for one up to a window late), except a SYN for a pending
//               offer (pending: its Ack is on its way, the SYN came first).
// Both tables are bounded (kMaxPending, kMaxNegotiated): when full, an Ask is
// refused as busy, never an earlier negotiation forgotten.
//
// Client side (VPM b): answer() turns the server's reply to our Ask into our
// Ack (the AID is among those offered, and the offer answers our Ask for our
// client and server) or a Refuse to send, with the outcome for the program.
//
// Every message is opened (MAC, expiry) and its nonce taken once
// (coop::NonceCache) before it reaches these.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <tuple>

#include "vpm/coop_wire.hpp"
#include "vpm/rules.hpp"

namespace vpm::coop {

inline constexpr uint64_t kWindowMs = 5000;  // from Ack to the client's connection on p2
inline constexpr uint64_t kOfferMs = 5000;   // from Offer to its Ack
inline constexpr size_t kMaxPending = 4096;
inline constexpr size_t kMaxNegotiated = 65536;  // held two windows each: 6500 a second

// How a negotiation ended, for counters and logs.
enum class Outcome : uint8_t {
  offered,
  negotiated,
  not_cooperative,  // Ask for a vaddr:p1 no cooperative app listens on
  no_app,           // no app takes the client
  busy,
  unknown_offer,  // Ack for no pending offer: never made, expired, or replayed
  mismatch,       // Ack that does not repeat its offer
  aid_mismatch,   // the client's AID was not offered (client side), or declined
  admitted,
  not_negotiated,  // a connection to a p2 nobody negotiated for that client
  window_passed,   // negotiated, but the client came too late
  pending,         // offered, the client's Ack not in yet (its SYN overtook it)
};
const char* outcome_name(Outcome o);

struct Reply {
  Outcome outcome;
  std::optional<Message> send;  // what to answer, if anything
};

// `fresh` makes the nonce and expiry of every message sent: the caller's
// randomness and clock (wall clock, Unix ms).
using Fresh = Header (*)(uint64_t now_ms);

class Negotiations {
 public:
  // `rules` are kept by reference: a reload's new rules apply to new Asks.
  Negotiations(const Ruleset& rules, Fresh fresh) : rules_(rules), fresh_(fresh) {}

  Reply on_ask(const Ask& ask, uint64_t now_ms);
  Reply on_ack(const Ack& ack, uint64_t now_ms);
  void on_refuse(const Refuse& refuse);
  // `isn`: the SYN's sequence number (a retransmission of the SYN that
  // used the translation is let in again).
  Outcome admit(const Endpoint& client, const IpAddr& vaddr, uint16_t p2, Proto proto,
                uint64_t now_ms, uint32_t isn = 0);
  void expire(uint64_t now_ms);
  // Whether admit() would let that connection in now (and changes nothing).
  bool admissible(const Endpoint& client, const IpAddr& vaddr, uint16_t p2, Proto proto,
                  uint64_t now_ms) const;

  // For `vpmtun table`: every offer and translation held.
  struct Entry {
    // pending (offered), negotiated (in its window), connected (admitted),
    // expired (never came; kept a window to say so)
    const char* state;
    Endpoint client;
    Endpoint server;  // vaddr:p1
    uint16_t p2;
    uint32_t aid;
    uint16_t app;
    uint64_t until_ms;  // the offer's expiry, or the end of the window
  };
  std::vector<Entry> entries(uint64_t now_ms) const;

  size_t pending() const { return offers_.size(); }
  size_t negotiated() const { return translations_.size(); }

 private:
  // (client, vaddr, p2, proto)
  using Key = std::tuple<Endpoint, IpAddr, uint16_t, Proto>;
  // Each offer and translation is also filed under the time it goes, so
  // expire() visits only what goes.
  using Deadlines = std::multimap<uint64_t, Nonce>;
  using KeyDeadlines = std::multimap<uint64_t, Key>;
  struct Pending {
    Offer offer;
    uint16_t app;
    Deadlines::iterator goes;
  };
  struct Translation {
    uint32_t aid;
    uint16_t app;
    uint64_t until_ms;
    uint16_t p1;
    bool used = false;  // admitted its connection
    uint32_t isn = 0;   // that connection's SYN
    KeyDeadlines::iterator goes;  // a window after until_ms
  };

  void forget(std::map<Nonce, Pending>::iterator offer);

  const Ruleset& rules_;
  Fresh fresh_;
  std::map<Nonce, Pending> offers_;
  std::map<Key, Nonce> offered_;  // the same offers, by what they are for
  std::map<Key, Translation> translations_;
  Deadlines offers_go_;
  KeyDeadlines translations_go_;
};

// Client side: our Ask's answer (an Offer or a Refuse) and our client's AID.
Reply answer(const Ask& ours, const Message& theirs, uint32_t our_aid, Header fresh);

}  // namespace vpm::coop
