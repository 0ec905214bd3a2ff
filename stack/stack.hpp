// The embedded lwIP stack and the virtual endpoints that live in it.
//
// Theory of operation. Every virtual address of the configuration is a
// point-to-point lwIP netif (no link layer); packets reach it already
// translated to the stack side (port p2) and leave it through a PacketSink
// that the caller translates back and writes to the TUN. For each
// (virtual address, p2, protocol) one endpoint is bound: with per-app
// allocation that is one per (vaddr, p1, AID), shared by every app with that
// AID (new connections go to them in turn); with per-connection allocation
// a p2 is bound when the engine first hands it out and is lent to the app of
// the one flow holding it (the caller says which, see input()). Built-in
// services:
//   echo       TCP: returns what it reads; only acknowledges (opens the
//              window for) what it has queued back, so a client that does
//              not read is slowed down, never buffered without bound.
//              Half-close: the client's FIN is answered once all is echoed.
//              UDP: returns each datagram.
//   discard    reads and drops.
//   http-info  answers an HTTP request with a JSON body naming the app, its
//              AID, p1, p2 and the client (UDP: any datagram gets the JSON).
// Forward endpoints splice each connection to a real backend socket, and
// exec endpoints the same way to a program registered by the application
// library (Instances), the next one in turn:
//   TCP  connect first, accept after: a client's SYN is held until the
//        backend accepts (then lwIP completes the handshake) or refuses or
//        stays silent for kBackendConnectMs (then the client gets a RST), so
//        a client never sees a connection that is then dropped. Each
//        direction only reads what the other can take (lwIP's send buffer,
//        the socket's), so neither a slow client nor a slow backend makes
//        memory grow. A FIN is passed on as a half-close.
//        proxy_protocol = "v2" sends the client's address first.
//   UDP  one connected socket per client address:port, idle-expired after
//        [timeouts] udp.
// Cooperative listens also have an endpoint on p1 itself, where the
// client's VPM negotiates: its bytes go to the Negotiator, at most
// kMaxNegotiationBytes unanswered; a connection silent for
// kNegotiationIdleMs is reset. The data connections it admits reach the
// app's p2 endpoint like any other.
// lwIP is one global instance: at most one Stack exists at a time, and all
// calls come from one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vpm/rules.hpp"

namespace stack {

// Receives each packet the stack sends, whole (stack view). Valid during the call only.
using PacketSink = std::function<void(std::span<uint8_t>)>;

// The event loop that backend sockets of forward endpoints live on (the
// daemon's epoll). watch() replaces any earlier watch of the same fd.
class IoLoop {
 public:
  virtual ~IoLoop() = default;
  virtual void watch(int fd, uint32_t epoll_events, std::function<void(uint32_t)> ready) = 0;
  virtual void unwatch(int fd) = 0;
  // `fd`, watched or not, is about to be closed, which takes it out of the
  // epoll set: its watch ends without a system call. (Our sockets are
  // close-on-exec and never duplicated, so no other descriptor keeps them
  // in the set.)
  virtual void closing(int fd) = 0;
};

// Where the connections and datagrams of serve = "exec" apps go: the
// programs that registered with the daemon (tun/instances.hpp). The stack
// relays to them as to a forward backend.
class Instances {
 public:
  virtual ~Instances() = default;
  // A non-blocking socket, connecting (TCP) or connected (UDP) to the next
  // instance of `app` that takes this client on (vaddr, p1), with the
  // client announced to the instance's library; -1 when no instance does.
  virtual int open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
                   const vpm::IpAddr& vaddr, uint16_t p1) = 0;
  // The instance behind `fd` (from open) refused it: the next open() tries another.
  virtual void refused(int fd) = 0;
  // `fd`, from open(), is about to be closed.
  virtual void closing(int fd) = 0;
};

// Cooperative mode: what the negotiation endpoint on p1 of a cooperative
// listen hears (tun/coop_server.hpp speaks the protocol; the stack only
// carries bytes).
class Negotiator {
 public:
  virtual ~Negotiator() = default;
  enum class End : uint8_t { keep, close, reset };
  // `stream`: what arrived from `peer` on one negotiation connection and
  // was not taken yet. Takes whole messages (returns the bytes taken) and
  // appends the answers to `reply`; `end` says whether the connection goes
  // on, closes after the reply, or is reset.
  virtual size_t heard(std::span<const uint8_t> stream, const vpm::Endpoint& peer,
                       const vpm::Endpoint& local, std::vector<uint8_t>& reply, End& end) = 0;
};

struct StackCounters {
  uint64_t packets_in = 0;
  uint64_t packets_out = 0;
  uint64_t input_errors = 0;  // lwIP refused a packet (bad checksum, no memory)
  uint64_t lwip_asserts = 0;  // lwIP assertions, logged and survived
  uint64_t tcp_accepted = 0;
  uint64_t tcp_closed = 0;
  uint64_t udp_datagrams = 0;
  uint64_t backend_connect_failures = 0;
  uint64_t udp_sessions_expired = 0;
  uint64_t udp_send_errors = 0;       // a datagram lwIP would not send
  uint64_t syn_cookies_sent = 0;      // SYNs answered with a cookie (too many handshakes pending)
  uint64_t syn_cookies_accepted = 0;  // ACKs that completed a cookie handshake
  uint64_t memory_deferrals = 0;  // data left with lwIP: memory short, the connection held enough
  uint64_t negotiation_connections = 0;  // accepted on a cooperative p1
  uint64_t negotiation_idle = 0;         // of those, closed for saying nothing
};

// Per app (index into Config::apps).
struct AppStackCounters {
  uint64_t accepted = 0;          // TCP connections accepted
  uint64_t backend_failures = 0;  // forward: backend refused or silent
  int backend_up = -1;       // forward: the last connect succeeded (1), failed (0), none yet (-1)
  uint64_t open = 0;         // TCP connections open now
  uint64_t syn_cookies = 0;  // connections that came through a cookie handshake
};

class Stack {
 public:
  // Brings up one netif per virtual address (MTU `mtu`) and binds the
  // endpoints. Throws std::runtime_error when something cannot be bound, or
  // for configuration the stack does not serve yet.
  // `io` is needed when any app forwards to a backend or is served by
  // programs (`instances`, needed then too).
  Stack(const vpm::Ruleset& rules, uint32_t mtu, PacketSink sink, IoLoop* io = nullptr,
        Instances* instances = nullptr);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  // One stack-side IP packet in, and the app the engine gave its flow
  // (Result::app; needed with per-connection allocation). Read, not
  // modified, and copied; the caller keeps its buffer. `verified`: the
  // TCP/UDP checksum is known to be good, lwIP need not check it.
  void input(std::span<uint8_t> packet, uint16_t app = vpm::kNoApp, bool verified = false);
  // Between these, input() holds client data for backends (forward, exec)
  // and end_batch() sends each connection's in one system call: for a
  // train of packets read from the device one after another.
  void begin_batch();
  void end_batch();
  // lwIP's timers (TCP retransmission, delayed ACKs, reassembly), backend
  // connect timeouts and UDP session expiry. Call at least every 100 ms.
  void poll();

  // The device cuts long TCP packets into segments of each client's MSS
  // (TSO): from now on lwIP sends segments of up to 65000 bytes (as the
  // MTU allows) to every client it accepts, whatever MSS the client
  // announced; the caller passes that
  // MSS to the device with each packet (vpm::Result::mss).
  void send_large_segments();

  // One worker of `workers` (tun/supervisor.hpp): its lwIP may hold its
  // share of [vpm] stack_memory_mb (now and after each reload), and its
  // share of the handshakes that may be pending before SYN cookies.
  void set_workers(uint32_t workers);

  // After the engine has taken the rules of a reload (the Ruleset given to
  // the constructor now holds them): binds the new endpoints, closes those
  // the rules no longer have, and moves connections to the apps' new
  // indices (`app_of`, from vpm::merge_reload; open connections keep their
  // app and endpoint). Returns what could not be set up, or "".
  std::string reload(const std::vector<uint16_t>& app_of);
  // Connections open, or waiting for their backend, per app (for merge_reload).
  std::vector<size_t> connections_per_app() const;

  // Cooperative mode: who answers on the negotiation endpoints (unset:
  // their connections are reset).
  void negotiate_with(Negotiator* negotiator);

  // Stops taking new connections (a SYN now gets a RST; UDP still flows);
  // those already open go on. For a graceful stop.
  void stop_accepting();
  // TCP connections open or being connected to their backend.
  size_t open_connections() const;
  // Handshakes pending: lwIP's, and SYNs held while their backend connects.
  size_t half_open() const;

  const StackCounters& counters() const;
  const std::vector<AppStackCounters>& app_counters() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace stack
