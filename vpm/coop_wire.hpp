// Cooperative mode's negotiation messages (DESIGN.md "Cooperative mode",
// the original's FIG 6-8), authenticated: pure encode/decode and the
// bound on replays. The sockets and the state machine are elsewhere.
//
// Theory of operation. The client's VPM (b) connects to the server's
// vaddr:p1 and the two exchange one message each way and back:
//
//   b -> a  Ask{nonce, expiry, client address:port (announced), vaddr:p1, proto}
//   a -> b  Offer{nonce, expiry, in reply to, client, vaddr:p1, proto, p2, AIDs}
//           or Refuse{nonce, expiry, in reply to, reason}
//   b -> a  Ack{nonce, expiry, in reply to, client, vaddr:p1, p2, the AID it chose}
//           or Refuse (its client's AID is not offered)
//
// Every message is sealed: u8 version (kVersion), u8 type, u16 length (of
// what follows the header, the MAC included), the body, then HMAC-SHA256
// over header and body with the key both daemons share ([cooperative]
// key_file). open() checks the length, the MAC (in constant time), then
// the fields, and refuses a message whose expiry has passed or lies more
// than kMaxLifetimeMs ahead. A nonce is 16 random bytes; NonceCache
// remembers the nonces it has seen until their expiry, so a message
// replayed within its lifetime is refused, and after it, is expired: the
// cache holds at most what kMaxLifetimeMs of traffic can bring, and is
// bounded besides (a full cache refuses, it never forgets early).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "vpm/address.hpp"

namespace vpm::coop {

inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kMacBytes = 32;
inline constexpr size_t kMaxAids = 32;
inline constexpr size_t kMaxMessage = 512;
inline constexpr uint64_t kMaxLifetimeMs = 30000;
inline constexpr size_t kMinKeyBytes = 32;

using Nonce = std::array<uint8_t, 16>;

enum class Type : uint8_t { ask = 1, offer = 2, ack = 3, refuse = 4 };

enum class Reason : uint8_t {
  not_cooperative = 1,  // nothing cooperative listens on that vaddr:p1
  no_app = 2,           // no app's rules take that client
  aid_mismatch = 3,     // the client's AID is not among those offered
  bad_message = 4,
  busy = 5,  // no p2 or no room to remember the negotiation
};
const char* reason_name(Reason r);

// What every message carries.
struct Header {
  Nonce nonce{};
  uint64_t expiry_ms = 0;  // wall clock (Unix ms): the two daemons' clocks must roughly agree
  bool operator==(const Header&) const = default;
};

struct Ask {
  Header h;
  Endpoint client;  // the address and port the client program will connect from
  Endpoint server;  // vaddr:p1
  Proto proto = Proto::tcp;
  bool operator==(const Ask&) const = default;
};
struct Offer {
  Header h;
  Nonce in_reply_to{};
  Endpoint client, server;
  Proto proto = Proto::tcp;
  uint16_t p2 = 0;
  std::vector<uint32_t> aids;  // those listening on server, within the client's rules
  bool operator==(const Offer&) const = default;
};
struct Ack {
  Header h;
  Nonce in_reply_to{};
  Endpoint client, server;
  uint16_t p2 = 0;
  uint32_t aid = 0;
  bool operator==(const Ack&) const = default;
};
struct Refuse {
  Header h;
  Nonce in_reply_to{};
  Reason reason = Reason::bad_message;
  bool operator==(const Refuse&) const = default;
};

using Message = std::variant<Ask, Offer, Ack, Refuse>;

// The message's bytes, sealed with `key`. More than kMaxAids AIDs are cut.
std::vector<uint8_t> seal(const Message& m, std::span<const uint8_t> key);

// The message, if `bytes` is one sealed with `key` and alive at `now_ms`;
// else nullopt and *why (a short reason, for counters and logs).
std::optional<Message> open(std::span<const uint8_t> bytes, std::span<const uint8_t> key,
                            uint64_t now_ms, std::string* why);

const Header& header_of(const Message& m);

// Loads libcrypto, which seal() and open() use, unless it is loaded. Throws
// std::runtime_error naming the library when it cannot; call it at start, so
// that a missing library stops the daemon there and not at a connection.
void load_crypto();

// The size of the message a byte stream starts with (messages follow each
// other on a negotiation connection): 0 while its header is incomplete;
// kNotOurs when the stream does not start with one of ours (another
// protocol: a plain client, or a message too long to be one). The size
// may exceed what the stream holds yet.
inline constexpr size_t kNotOurs = SIZE_MAX;
size_t frame_size(std::span<const uint8_t> stream);

// Nonces seen and not yet expired.
class NonceCache {
 public:
  explicit NonceCache(size_t max_entries) : max_(max_entries) {}
  // True the first time a nonce is seen while it lives; false for a replay,
  // or when the cache is full of live nonces (then nothing is forgotten).
  bool first_use(const Nonce& n, uint64_t expiry_ms, uint64_t now_ms);
  size_t size() const { return by_nonce_.size(); }

 private:
  void forget_expired(uint64_t now_ms);
  size_t max_;
  std::map<Nonce, uint64_t> by_nonce_;
  std::multimap<uint64_t, Nonce> by_expiry_;
};

}  // namespace vpm::coop
