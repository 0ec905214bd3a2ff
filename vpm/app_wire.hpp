// The application library's wire: its messages to the daemon, the rule for
// which binds it takes, and the table through which it learns who a relayed
// peer really is. Pure encode/decode over bytes; the sockets are elsewhere
// (tools/vpmtun-app/, tun/instances.*).
//
// Theory of operation. A program run by `vpmtun exec --app NAME` has the
// library preloaded and, in VPMTUN_LISTEN, the app's listens
// (format_listens). When it binds a TCP or UDP port p1 the app listens on
// (takes_bind), the library binds an anonymous loopback port R instead and
// opens one SOCK_SEQPACKET connection to the daemon's library socket for
// that socket:
//
//   library                          daemon
//   Hello{app, command}        ->    checks the app (serve = "exec") and the
//                                    peer's uid (SO_PEERCRED, [[app]] users)
//                              <-    Welcome{status, reason, listens}
//                                    + the app's peer table (a memfd, SCM_RIGHTS)
//   Bind{proto, family, v6only,
//        requested address, p1, R} ->
//                              <-    Bound{status, reason}
//
// Cooperative mode: a program's connect() to one of the app's remotes
// (Welcome lists them) opens its own connection to the daemon, with its
// socket (SCM_RIGHTS) and no Hello:
//   Dial{app, client, server}  ->    checks app and uid as for Hello, then
//                                    negotiates (tun/coop.hpp)
//                              <-    Dialed{status, reason, p2}
//
// The registration lives as long as that connection: the library keeps its
// descriptor open beside the socket (inherited by forks and execs, as the
// socket is), so it ends when the last process holding the socket is gone.
// A library connection may send one Hello and then one Bind, or one Dial;
// anything else closes it. Every message is one datagram of at most kMaxMessage bytes:
//   u8 version (kVersion), u8 type, u16 body length, body.
//
// The peer table (PeerTable) is how the library turns what the kernel says
// into what the program should see, without a per-process cache that an
// exec or a dup would lose. The daemon relays each connection (or UDP
// client) from its own loopback port L to the instance's real port R, and
// writes, as soon as connect() has given it L, the slot of L: the client's
// address and port, the virtual address and p1 (the library waits a moment
// for the slot of a connection it accepted on a registered port). So accept/getpeername/recvfrom
// map the kernel's peer (loopback, L) to the client; getsockname maps the kernel's local port R
// through the slot of R, written at Bind. UDP replies need the way back, client -> L: a small
// open-addressing index. Slots are written by the daemon only, under a sequence lock, and read by
// the library.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "vpm/address.hpp"

namespace vpm::appwire {

inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kMaxMessage = 2048;
inline constexpr size_t kMaxName = 64;      // an app's name
inline constexpr size_t kMaxCommand = 256;  // the command line, for `vpmtun apps`
inline constexpr size_t kMaxReason = 256;
inline constexpr size_t kMaxListens = 64;

enum class Type : uint8_t { hello = 1, welcome = 2, bind = 3, bound = 4, dial = 5, dialed = 6 };

enum class Status : uint8_t {
  ok = 0,
  unknown_app = 1,   // no app of that name
  not_exec = 2,      // the app is not served by programs (serve = "exec")
  not_allowed = 3,   // the user may not run instances of the app
  not_listened = 4,  // the app does not listen on that port and address
  bad_message = 5,
  full = 6,  // the daemon holds as many registrations as it takes
  // Dial (cooperative mode):
  not_remote = 7,   // not one of the app's remote servers
  refused = 8,      // the negotiation refused it (AID, rules, key)
  unreachable = 9,  // the server's VPM cannot be reached
  timed_out = 10,   // no answer from it in time
};
const char* status_name(Status s);

struct ListenPort {
  Proto proto = Proto::tcp;
  IpAddr vaddr;
  uint16_t p1 = 0;
  bool operator==(const ListenPort&) const = default;
};

struct Hello {
  std::string app;
  std::string command;
  bool operator==(const Hello&) const = default;
};
struct Welcome {
  Status status = Status::ok;
  std::string reason;
  std::vector<ListenPort> listens;
  std::vector<ListenPort> remotes;  // cooperative mode: the servers its connects negotiate for
  bool operator==(const Welcome&) const = default;
};
struct Bind {
  Proto proto = Proto::tcp;
  bool ipv6 = false;    // the socket's family: AF_INET6 (relayed over ::1) or AF_INET
  bool v6only = false;  // an AF_INET6 socket that takes no IPv4 clients
  IpAddr requested;     // the address the program asked for (:: or 0.0.0.0 for any)
  uint16_t p1 = 0;
  uint16_t real_port = 0;
  bool operator==(const Bind&) const = default;
};
struct Bound {
  Status status = Status::ok;
  std::string reason;
  bool operator==(const Bound&) const = default;
};

// Cooperative mode: the program's socket, bound to `client`, is about to
// connect to `server` (one of the app's remotes); the daemon negotiates.
// A connection's first and only message.
struct Dial {
  std::string app;
  Endpoint client;
  Endpoint server;
  bool operator==(const Dial&) const = default;
};
struct Dialed {
  Status status = Status::ok;
  std::string reason;
  uint16_t p2 = 0;  // where to connect instead of the server's p1
  bool operator==(const Dialed&) const = default;
};

using Message = std::variant<Hello, Welcome, Bind, Bound, Dial, Dialed>;

// Longer strings are cut to their bounds, more listens to kMaxListens.
std::vector<uint8_t> encode(const Message& m);
// nullopt, with *why set, for anything malformed: wrong version, unknown
// type, a length that disagrees, a string out of bounds, an unknown enum.
std::optional<Message> decode(std::span<const uint8_t> bytes, std::string* why);

// VPMTUN_LISTEN: "tcp/10.99.0.10/9000,udp/fd00:99::10/9000".
std::string format_listens(const std::vector<ListenPort>& listens);
std::optional<std::vector<ListenPort>> parse_listens(std::string_view text);

// Whether the library takes a bind of `port` to `addr` (the address the
// program asked for): the app listens on p1 = port with that protocol, and
// the address is a wildcard (0.0.0.0, ::), loopback (127.0.0.0/8, ::1) or
// one of the app's virtual addresses of that p1. An IPv4 address may come
// IPv4-mapped from an AF_INET6 socket. Any other bind is left alone.
bool takes_bind(const std::vector<ListenPort>& listens, Proto proto, const IpAddr& addr,
                uint16_t port);
bool is_wildcard(const IpAddr& a);
bool is_loopback(const IpAddr& a);

// One slot of the peer table (see the theory above).
struct PeerSlot {
  bool valid = false;
  IpAddr addr;        // the client (relay slots), or the requested address (bind slots)
  uint16_t port = 0;  // the client's port (relay slots)
  IpAddr vaddr;       // the virtual address the client used (relay slots)
  uint16_t p1 = 0;
  uint16_t real_port = 0;  // the instance's real port R
  bool operator==(const PeerSlot&) const = default;
};

// A view of the table's bytes (kTableBytes, zeroed when created). The
// writer (the daemon) must be one thread; readers may be anywhere.
class PeerTable {
 public:
  static constexpr size_t kSlotBytes = 48;
  static constexpr size_t kPorts = 65536;
  static constexpr size_t kIndexSlots = 65536;
  static constexpr size_t kProbe = 32;  // an index lookup reads at most this many slots
  // relay slots [proto][family][L], bind slots [proto][family][R], the UDP index.
  static constexpr size_t kTableBytes = 2 * (2 * 2 * kPorts * kSlotBytes) + kIndexSlots * 4;

  explicit PeerTable(std::span<uint8_t> bytes) : bytes_(bytes) {}
  bool usable() const { return bytes_.size() >= kTableBytes; }

  // The relay from the daemon's loopback port L (family of the instance's socket).
  void set_relay(Proto proto, bool ipv6, uint16_t local_port, const PeerSlot& s);
  void clear_relay(Proto proto, bool ipv6, uint16_t local_port);
  PeerSlot relay(Proto proto, bool ipv6, uint16_t local_port) const;

  void set_bind(Proto proto, bool ipv6, uint16_t real_port, const PeerSlot& s);
  void clear_bind(Proto proto, bool ipv6, uint16_t real_port);
  PeerSlot bind(Proto proto, bool ipv6, uint16_t real_port) const;

  // UDP: the daemon's port L that relays `client`:`cport` to real port R,
  // or 0. index_udp() returns false when the client's probe run is full
  // (its replies cannot be routed; the daemon counts it).
  bool index_udp(bool ipv6, uint16_t local_port, const IpAddr& client, uint16_t cport,
                 uint16_t real_port);
  void unindex_udp(bool ipv6, uint16_t local_port, const IpAddr& client, uint16_t cport,
                   uint16_t real_port);
  uint16_t find_udp(bool ipv6, const IpAddr& client, uint16_t cport, uint16_t real_port) const;

 private:
  uint8_t* slot(size_t table, Proto proto, bool ipv6, uint16_t port) const;
  void write(uint8_t* slot, const PeerSlot& s);
  PeerSlot read(const uint8_t* slot) const;
  uint32_t* index_at(size_t i) const;

  std::span<uint8_t> bytes_;
};

}  // namespace vpm::appwire
