// Internal to stack/: the types the stack's files share, and Stack::Impl.
//
// The files, one concern each:
//   stack.cpp      the Stack's public face, endpoints (binding, accepting)
//   netif.cpp      the lwIP netifs: packets in and out
//   handshake.cpp  new connections: SYNs held for a backend, SYN cookies,
//                  TIME_WAIT reuse, RFC 6528 sequence numbers
//   services.cpp   the built-in services (echo, discard, http-info) and the
//                  lwIP callbacks of accepted connections
//   relay.cpp      the relay to a host socket: forward's TCP and UDP
//   negotiation.cpp  cooperative mode's endpoint on p1
// See stack.hpp for the theory of operation.
#pragma once

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "lwip/ip.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/udp.h"
#include "stack/stack.hpp"
#include "stack/stack_memory.hpp"
#include "vpm/packet.hpp"
#include "vpm/syn_cookie.hpp"

namespace stack {

enum class Service { echo, discard, http_info, forward, exec, negotiate };
// Spliced to a host socket (relay.cpp): a forward backend or an exec'd instance.
inline bool relayed(Service s) { return s == Service::forward || s == Service::exec; }

constexpr uint64_t kBackendConnectMs = 3000;  // then a held SYN is refused
constexpr uint8_t kInstanceTries = 4;         // exec: instances a SYN tries before it is refused
constexpr uint64_t kHandshakeMs = 20000;  // lwIP's SYN_RCVD timeout: then a held backend is closed
// Handshakes lwIP holds (or whose backend is being connected) at most;
// beyond, SYNs are answered with cookies (vpm/syn_cookie.hpp), which cost
// nothing until the client's ACK proves them. So a flood of spoofed SYNs
// holds at most this many pcbs (and their SYN-ACK retransmissions) and
// makes at most this many backend connects at a time.
constexpr size_t kMaxHalfOpen = 256;
constexpr size_t kMaxTimeWait = 1024;  // TIME_WAIT pcbs kept (the newest)
constexpr size_t kRelayChunk = 65536;
constexpr size_t kMaxIov = 64;  // pbufs of client data passed to one sendmsg
// How a relay's backend socket is watched, from its connect() on: one
// epoll_ctl per connection (relay.cpp, Stack::Impl::watch_backend).
constexpr uint32_t kRelayEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
// Client data a connection holds back within a batch: beyond it, it goes
// now, while it is still in the cache.
constexpr size_t kBatchBytes = 65536;
// Under memory pressure a connection holding this much the endpoint has not
// passed on takes no more data (stack_memory.hpp).
constexpr size_t kPressedPending = 64 * 1024;

// What an endpoint may queue to send on `pcb` now: lwIP's free send
// buffer, less under memory pressure (stack_memory.hpp).
inline size_t send_room(const tcp_pcb* pcb) {
  size_t room = tcp_sndbuf(pcb);
  return send_allowance(TCP_SND_BUF - std::min<size_t>(room, TCP_SND_BUF), room);
}

inline uint64_t now_ms() {
  using namespace std::chrono;
  return static_cast<uint64_t>(
      duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count());
}

// (client address, client port, virtual address, p2) as bytes, for maps.
using Tuple = std::array<uint8_t, 36>;
inline Tuple make_tuple(const vpm::IpAddr& client, uint16_t cport, const vpm::IpAddr& vip,
                        uint16_t p2) {
  Tuple t{};
  std::memcpy(t.data(), client.bytes.data(), 16);
  std::memcpy(t.data() + 16, vip.bytes.data(), 16);
  vpm::store16(t.data() + 32, cport);
  vpm::store16(t.data() + 34, p2);
  return t;
}

struct TupleHash {
  size_t operator()(const Tuple& t) const {
    return std::hash<std::string_view>{}({reinterpret_cast<const char*>(t.data()), t.size()});
  }
};

inline vpm::IpAddr from_lwip(const ip_addr_t* addr) {
  return IP_IS_V6(addr) ? vpm::IpAddr::v6(reinterpret_cast<const uint8_t*>(ip_2_ip6(addr)->addr))
                        : vpm::IpAddr::v4(reinterpret_cast<const uint8_t*>(&ip_2_ip4(addr)->addr));
}

// PROXY protocol v2 header: the client as it connected (address, port) to
// the virtual address and p1 it used (relay.cpp).
std::string proxy_v2(bool tcp, const vpm::IpAddr& client, uint16_t cport, const vpm::IpAddr& vip,
                     uint16_t p1);

constexpr size_t kMaxRequest = 16 * 1024;  // http-info reads at most this much of a request
constexpr size_t kMaxNegotiationBytes = 4096;   // unanswered on a negotiation connection
constexpr uint64_t kNegotiationIdleMs = 30000;  // then a silent one is reset

inline ip_addr_t to_lwip(const vpm::IpAddr& a) {
  ip_addr_t out;
  if (a.is_v4()) {
    IP_ADDR4(&out, a.bytes[12], a.bytes[13], a.bytes[14], a.bytes[15]);
  } else {
    IP_SET_TYPE_VAL(out, IPADDR_TYPE_V6);
    std::memcpy(ip_2_ip6(&out)->addr, a.bytes.data(), 16);
    ip6_addr_clear_zone(ip_2_ip6(&out));
  }
  return out;
}

// One bound (virtual address, p2, protocol) and the apps that share it.
struct Endpoint {
  Stack::Impl* stack = nullptr;
  vpm::IpAddr vaddr;
  uint16_t p1 = 0, p2 = 0;
  vpm::Proto proto = vpm::Proto::tcp;
  std::vector<uint16_t> apps;      // they take new connections in turn
  std::vector<uint16_t> draining;  // removed by a reload: only when no app is left
  size_t turn = 0;                 // next app to take a connection
  tcp_pcb* listener = nullptr;
  udp_pcb* udp = nullptr;
  bool negotiates = false;  // cooperative mode's endpoint on p1 (negotiation.cpp)
};

// One accepted TCP connection.
struct Conn {
  Stack::Impl* stack = nullptr;
  Tuple key;
  uint16_t p1 = 0, p2 = 0;
  uint16_t app = 0;
  Service service = Service::discard;
  tcp_pcb* pcb = nullptr;
  pbuf* pending = nullptr;  // echo: read, not yet queued back; forward: not yet sent to the backend
  pbuf* pending_tail = nullptr;  // its last pbuf, where hold() appends
  size_t pending_bytes = 0;
  std::string request;  // http-info; negotiate: bytes not taken yet
  uint64_t last_ms = 0;  // negotiate: when the peer last said something
  bool fin_seen = false;
  bool answered = false;
  // forward
  int sock = -1;
  std::string preamble;      // PROXY header still to send
  std::string from_backend;  // read from the backend, not yet taken by lwIP
  bool backend_fin = false;     // read to its end
  bool backend_hung_up = false;  // epoll has reported its FIN (or a hang-up)
  bool sent_fin = false;
  bool unsent = false;  // in Impl::unsent: sent to the backend when the batch ends
  std::string who;  // "client > vaddr:p1 (app, p2)", kept for the debug log only
};

// A client SYN and the app chosen for it: held while the backend
// connection of a forward app is made, then until lwIP accepts.
struct Held {
  std::vector<uint8_t> syn;  // emptied once lwIP has it
  int sock = -1;             // forward: the backend connection
  uint16_t app = 0;
  uint64_t started_ms = 0;
  std::vector<uint8_t> ack;  // a cookie handshake: the client's ACK, which follows `syn`
  uint16_t p1 = 0;
  uint8_t tries = 0;  // exec: instances that refused it so far
  uint32_t events = 0;  // forward: what epoll reported of `sock` since it connected
};

inline vpm::TcpTuple tcp_tuple(const vpm::PacketView& v) {
  return {v.src(), v.dst(), v.src_port(), v.dst_port()};
}

// A forward UDP session: one connected socket per client address:port.
struct UdpSession {
  int sock = -1;
  uint64_t last_ms = 0;
  ip_addr_t client;
  uint16_t client_port = 0;
  Endpoint* ep = nullptr;
};

struct Stack::Impl {
  const vpm::Ruleset& rules;
  PacketSink sink;
  IoLoop* io = nullptr;
  Instances* instances = nullptr;
  Negotiator* negotiator = nullptr;
  std::map<Tuple, Held> connecting;  // SYNs held for their backend
  std::map<Tuple, Held> admitted;    // SYNs lwIP has, with their app, until it accepts
  std::map<Tuple, UdpSession> udp_sessions;
  StackCounters counters;
  std::vector<AppStackCounters> apps;
  bool per_connection = false;
  uint32_t workers = 1;  // workers splitting stack_memory_mb and kMaxHalfOpen
  void limit_memory() {
    stack_memory().limit = (size_t{rules.config().vpm.stack_memory_mb} << 20) / workers;
  }
  bool accepting = true;   // false once draining
  uint16_t large_mss = 0;  // with send_large_segments(): lwIP's MSS towards every client
  std::map<vpm::IpAddr, std::unique_ptr<netif>> netifs;  // one per virtual address
  u16_t mtu = 0;
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  std::map<std::tuple<vpm::IpAddr, uint16_t, vpm::Proto>, Endpoint*> by_port;
  std::unordered_set<Conn*> conns;
  std::unordered_set<Tuple, TupleHash> open_tuples;  // the keys of conns
  // Within a batch of input (Stack::begin_batch), client data for backends
  // waits here, so a train of small packets leaves in one send.
  bool batching = false;
  std::vector<Conn*> unsent;
  std::vector<uint8_t> out;
  vpm::SynCookies cookies;
  uint64_t last_cookie_ms = 0;       // when a SYN was last answered with a cookie
  std::optional<uint32_t> next_isn;  // the ISN lwIP takes for the SYN being delivered
  bool silent = false;               // drop what lwIP sends (its SYN-ACK of a cookie handshake)

  Impl(const vpm::Ruleset& r, PacketSink s)
      : rules(r), sink(std::move(s)), apps(r.config().apps.size()), cookies(random_key()) {}

  static vpm::SipKey random_key();

  // RFC 6528, or the cookie a handshake completed with (lwIP's TCP_ISN hook).
  uint32_t isn(const ip_addr_t* local, uint16_t local_port, const ip_addr_t* remote,
               uint16_t remote_port);

  size_t half_open() const { return connecting.size() + admitted.size(); }

  Service service_of(uint16_t app) const {
    const auto& a = rules.config().apps[app];
    if (a.forward) return Service::forward;
    if (a.serve == "exec") return Service::exec;
    if (a.serve == "echo") return Service::echo;
    if (a.serve == "http-info") return Service::http_info;
    return Service::discard;
  }

  Service service_at(const Endpoint* ep, uint16_t app) const {
    return ep->negotiates ? Service::negotiate : service_of(app);
  }

  std::string info_json(uint16_t p1, uint16_t p2, uint16_t app, const ip_addr_t* client,
                        uint16_t port, const char* proto) const;

  // The app that takes a new connection or datagram: the endpoint's apps in
  // turn; the draining ones only when a reload has left no other.
  uint16_t take_turn(Endpoint* ep) {
    const auto& list = ep->apps.empty() ? ep->draining : ep->apps;
    return list.empty() ? vpm::kNoApp : list[ep->turn++ % list.size()];
  }

  // A datagram from an endpoint to its client. It leaves through the netif of
  // the endpoint's own address: lwIP's udp_sendto() would route it through
  // the default netif and, finding the pcb's address is not that netif's,
  // drop it (ERR_RTE).
  void udp_reply(Endpoint* ep, pbuf* p, const ip_addr_t* client, u16_t port);

  err_t emit(pbuf* p);

  void forget(Conn* c);

  // Resets the client's connection. lwIP frees a TIME_WAIT pcb on abort
  // without calling the error callback, so that case is closed instead.
  void abort(Conn* c);

  // Closes our side once everything queued has been handed to lwIP.
  void close(Conn* c);

  // Forward, client to backend: send what lwIP delivered, acknowledging
  // (opening the client's window for) only what the socket took. Returns
  // false when it had to abort the connection (lwIP callbacks then return
  // ERR_ABRT, as lwIP requires).
  bool to_backend(Conn* c);

  // Forward, backend to client: read only as much as lwIP can queue.
  enum class Outcome { alive, aborted };
  Outcome from_backend(Conn* c);

  // Watches the backend socket of an accepted connection (relay.cpp).
  void watch_backend(Conn* c);

  // A SYN for a forward app: connect to its backend first; lwIP sees the
  // SYN (and, for a cookie handshake, the client's ACK) once the backend
  // has accepted.
  void hold_syn(std::vector<uint8_t> syn, std::vector<uint8_t> ack, const Tuple& key, uint16_t app,
                uint16_t p1, uint8_t tries = 0);

  // A socket to the app's backend or next instance for this client:
  // connecting (TCP) or connected (UDP); -1 if there is none (relay.cpp).
  int open_relay(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
                 const vpm::IpAddr& vaddr, uint16_t p1);
  // The same, and an exec app with no instance to take the client passes
  // it to the other exec apps of its stream (the endpoint's apps, one AID)
  // before it is refused; `app` becomes the one that took it.
  int open_relay_in_stream(Endpoint* ep, uint16_t& app, vpm::Proto proto, const vpm::IpAddr& client,
                           uint16_t cport);
  void close_relay(int fd);
  // What the apps need and the stack was not given: "" or what is missing.
  std::string missing_loop() const {
    for (const auto& app : rules.config().apps) {
      if (app.forward && !io) return "app '" + app.name + "': forward endpoints need an event loop";
      if (app.serve == "exec" && (!io || !instances))
        return "app '" + app.name + "': serve = \"exec\" needs the daemon's library socket";
    }
    return "";
  }

  // The backend connection of a held SYN is made, or failed (`ready`: epoll's events).
  void backend_answered(const Tuple& key, uint32_t ready);

  // Tells the client of a held SYN that its app's backend will not answer.
  // A client past a cookie handshake is reset through its ACK's numbers.
  void refuse(const Held& held);

  // Binds (vaddr, p2, proto) in lwIP; nullptr if lwIP refuses.
  Endpoint* bind(const vpm::IpAddr& vaddr, uint16_t p1, uint16_t p2, vpm::Proto proto);
  // Closes an endpoint and the UDP sessions through it.
  void unbind(Endpoint* ep);
  // A netif for each virtual address of the rules, and none for others.
  void sync_netifs();
  // Per-app: one endpoint per (vaddr, p2, protocol) of the rules, with the
  // apps that share it; endpoints the rules no longer have are closed.
  // Returns what could not be bound, or "".
  std::string sync_endpoints();

  // Where a packet that starts something goes. With per-connection
  // allocation p2s are bound when first used, and each is lent to the app
  // of the one flow that holds it.
  Endpoint* endpoint_for(const vpm::PacketView& v, vpm::Proto proto, uint16_t app);

  // A new SYN for the 4-tuple of a pcb in TIME_WAIT: lwIP would answer
  // with an ACK and keep the client waiting for 2 MSL. Like Linux (RFC 6191
  // without timestamps), let the new connection in when its sequence number
  // is past the old one's (Linux clients' ISNs grow with time).
  void reuse_time_wait(const vpm::PacketView& v);

  // Each TIME_WAIT pcb costs memory, and lwIP's slow timer visits each:
  // keep the newest kMaxTimeWait (lwIP adds them at the list head).
  void limit_time_wait();

  // One packet in. A new SYN is given its app here, and held while a
  // forward app's backend is connected, or answered with a cookie when
  // too many handshakes are pending; everything else goes to lwIP.
  void arrive(std::span<uint8_t> packet, uint16_t flow_app, bool verified);

  // Too many handshakes pending: answer the SYN ourselves, keeping nothing.
  void answer_with_cookie(const vpm::PacketView& v);

  // A TCP segment while cookies are out. An ACK that acknowledges one of
  // them completes its handshake: lwIP gets the SYN the client sent, then
  // this ACK. What follows it while a forward app's backend is connected
  // is dropped (the client sends it again). False for the segments that
  // are lwIP's to take (or answer with a RST).
  bool cookie_segment(const vpm::PacketView& v, std::span<uint8_t> packet, uint16_t flow_app);

  // lwIP takes the client's SYN with the cookie as its own ISN (its
  // SYN-ACK, which the client has already, is not sent), then the ACK.
  void complete_handshake(std::span<const uint8_t> syn, std::span<const uint8_t> ack);

  // Packets enter through the default netif, whose flags say what lwIP checks.
  void deliver(std::span<const uint8_t> packet, bool verified = false);

  void udp_forward(Endpoint* ep, uint16_t app, pbuf* p, const ip_addr_t* addr, u16_t port);
  // Closes UDP sessions idle past [timeouts] udp (relay.cpp).
  void expire_udp_sessions(uint64_t now);
  // Refuses held SYNs whose backend is silent, forgets handshakes the
  // client never completed (handshake.cpp).
  void expire_handshakes(uint64_t now);

  // Data from the client that the endpoint has not passed on yet.
  void hold(Conn* c, pbuf* p);
  void consumed(Conn* c, size_t n);

  // Echo: queue back what was read, as far as the send buffer allows, and
  // acknowledge only that much (the client's window is our back-pressure).
  void pump(Conn* c);

  // Cooperative mode's endpoint on p1: `p` to the Negotiator, its answer
  // back. False when it reset the connection (negotiation.cpp).
  bool negotiate(Conn* c, pbuf* p);
  // Binds the endpoint on p1 of each cooperative listen (negotiation.cpp).
  void bind_negotiation(const vpm::Listen& l, std::set<Endpoint*>& kept, std::string& failed);
};

err_t on_negotiation_idle(void* arg, tcp_pcb* pcb);

// lwIP's callbacks for an accepted connection (services.cpp).
err_t on_tcp_recv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err);
err_t on_tcp_sent(void* arg, tcp_pcb* pcb, u16_t len);
void on_tcp_err(void* arg, err_t err);

}  // namespace stack
