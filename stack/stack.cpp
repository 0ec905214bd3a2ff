// lwIP netifs for the virtual addresses, and the built-in endpoints.
#include "stack/stack.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <string_view>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "lwip/init.h"
#include "lwip/ip.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/priv/tcp_priv.h"  // tcp_tw_pcbs: TIME_WAIT reuse and its limit
#include "lwip/tcp.h"
#include "lwip/timeouts.h"
#include "lwip/udp.h"
#include "stack/stack_memory.hpp"
#include "stack_internal.hpp"
#include "vpm/packet.hpp"
#include "vpm/refusal.hpp"
#include "vpm/syn_cookie.hpp"

namespace stack {

namespace {

enum class Service { echo, discard, http_info, forward };

constexpr uint64_t kBackendConnectMs = 3000;  // then a held SYN is refused
constexpr uint64_t kHandshakeMs = 20000;      // lwIP's SYN_RCVD timeout: then a held backend is closed
// Handshakes lwIP holds (or whose backend is being connected) at most;
// beyond, SYNs are answered with cookies (vpm/syn_cookie.hpp). lwIP looks
// up every segment in a list that holds these, so the bound keeps a flood
// from slowing every connection, and a spoofed SYN costs no backend connect.
constexpr size_t kMaxHalfOpen = 256;
constexpr size_t kMaxTimeWait = 1024;         // lwIP searches TIME_WAIT pcbs linearly
constexpr size_t kRelayChunk = 65536;
// Under memory pressure a connection holding this much the endpoint has not
// passed on takes no more data (stack_memory.hpp).
constexpr size_t kPressedPending = 64 * 1024;

// What an endpoint may queue to send on `pcb` now: lwIP's free send
// buffer, less under memory pressure (stack_memory.hpp).
size_t send_room(const tcp_pcb* pcb) {
  size_t room = tcp_sndbuf(pcb);
  return send_allowance(TCP_SND_BUF - std::min<size_t>(room, TCP_SND_BUF), room);
}

uint64_t now_ms() {
  using namespace std::chrono;
  return static_cast<uint64_t>(
      duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count());
}

// (client address, client port, virtual address, p2) as bytes, for maps.
using Tuple = std::array<uint8_t, 36>;
Tuple make_tuple(const vpm::IpAddr& client, uint16_t cport, const vpm::IpAddr& vip, uint16_t p2) {
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

vpm::IpAddr from_lwip(const ip_addr_t* addr) {
  return IP_IS_V6(addr) ? vpm::IpAddr::v6(reinterpret_cast<const uint8_t*>(ip_2_ip6(addr)->addr))
                        : vpm::IpAddr::v4(reinterpret_cast<const uint8_t*>(&ip_2_ip4(addr)->addr));
}

// PROXY protocol v2 header: the client as it connected (address, port) to
// the virtual address and p1 it used.
std::string proxy_v2(bool tcp, const vpm::IpAddr& client, uint16_t cport, const vpm::IpAddr& vip,
                     uint16_t p1) {
  static const char sig[] = "\r\n\r\n\0\r\nQUIT\n";
  std::string h(sig, 12);
  bool v4 = client.is_v4();
  h += static_cast<char>(0x21);  // version 2, PROXY
  h += static_cast<char>((v4 ? 0x10 : 0x20) | (tcp ? 0x01 : 0x02));
  uint16_t len = v4 ? 12 : 36;
  h += static_cast<char>(len >> 8);
  h += static_cast<char>(len & 0xff);
  auto addr = [&](const vpm::IpAddr& a) {
    if (v4)
      h.append(reinterpret_cast<const char*>(&a.bytes[12]), 4);
    else
      h.append(reinterpret_cast<const char*>(a.bytes.data()), 16);
  };
  addr(client);
  addr(vip);
  for (uint16_t port : {cport, p1}) {
    h += static_cast<char>(port >> 8);
    h += static_cast<char>(port & 0xff);
  }
  return h;
}

constexpr size_t kMaxRequest = 16 * 1024;  // http-info reads at most this much of a request

ip_addr_t to_lwip(const vpm::IpAddr& a) {
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
  size_t pending_bytes = 0;
  std::string request;      // http-info
  bool fin_seen = false;
  bool answered = false;
  // forward
  int sock = -1;
  std::string preamble;      // PROXY header still to send
  std::string from_backend;  // read from the backend, not yet taken by lwIP
  bool backend_fin = false;
  bool sent_fin = false;
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
};

vpm::TcpTuple tcp_tuple(const vpm::PacketView& v) {
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

}  // namespace

struct Stack::Impl {
  const vpm::Ruleset& rules;
  PacketSink sink;
  IoLoop* io = nullptr;
  std::map<Tuple, Held> connecting;  // SYNs held for their backend
  std::map<Tuple, Held> admitted;    // SYNs lwIP has, with their app, until it accepts
  std::map<Tuple, UdpSession> udp_sessions;
  StackCounters counters;
  std::vector<AppStackCounters> apps;
  bool per_connection = false;
  bool accepting = true;   // false once draining
  uint16_t large_mss = 0;  // with send_large_segments(): lwIP's MSS towards every client
  std::map<vpm::IpAddr, std::unique_ptr<netif>> netifs;  // one per virtual address
  u16_t mtu = 0;
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  std::map<std::tuple<vpm::IpAddr, uint16_t, vpm::Proto>, Endpoint*> by_port;
  std::unordered_set<Conn*> conns;
  std::unordered_set<Tuple, TupleHash> open_tuples;  // the keys of conns
  std::vector<uint8_t> out;
  vpm::SynCookies cookies;
  uint64_t last_cookie_ms = 0;      // when a SYN was last answered with a cookie
  std::optional<uint32_t> next_isn;  // the ISN lwIP takes for the SYN being delivered
  bool silent = false;               // drop what lwIP sends (its SYN-ACK of a cookie handshake)

  Impl(const vpm::Ruleset& r, PacketSink s)
      : rules(r), sink(std::move(s)), apps(r.config().apps.size()), cookies(random_key()) {}

  static vpm::SipKey random_key() {
    std::random_device rd;
    auto word = [&] { return uint64_t{rd()} << 32 | rd(); };
    return {word(), word()};
  }

  // RFC 6528, or the cookie a handshake completed with (lwIP's TCP_ISN hook).
  uint32_t isn(const ip_addr_t* local, uint16_t local_port, const ip_addr_t* remote,
               uint16_t remote_port) {
    if (next_isn) return *std::exchange(next_isn, std::nullopt);
    using namespace std::chrono;
    auto us = duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count();
    return cookies.isn({from_lwip(remote), from_lwip(local), remote_port, local_port},
                       static_cast<uint64_t>(us));
  }

  size_t half_open() const { return connecting.size() + admitted.size(); }

  Service service_of(uint16_t app) const {
    const auto& a = rules.config().apps[app];
    if (a.forward) return Service::forward;
    if (a.serve == "echo") return Service::echo;
    if (a.serve == "http-info") return Service::http_info;
    return Service::discard;
  }

  std::string info_json(uint16_t p1, uint16_t p2, uint16_t app, const ip_addr_t* client,
                        uint16_t port, const char* proto) const {
    const auto& a = rules.config().apps[app];
    return fmt::format(
        "{{\"app\":\"{}\",\"aid\":{},\"p1\":{},\"p2\":{},\"client\":\"{}\",\"protocol\":\"{}\"}}\n",
        a.name, a.aid, p1, p2, vpm::Endpoint{from_lwip(client), port}.str(), proto);
  }

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
  void udp_reply(Endpoint* ep, pbuf* p, const ip_addr_t* client, u16_t port) {
    auto nif = netifs.find(ep->vaddr);
    if (nif == netifs.end() || udp_sendto_if(ep->udp, p, client, port, nif->second.get()) != ERR_OK)
      ++counters.udp_send_errors;
  }

  err_t emit(pbuf* p) {
    if (silent) return ERR_OK;
    out.resize(p->tot_len);
    pbuf_copy_partial(p, out.data(), p->tot_len, 0);
    ++counters.packets_out;
    sink({out.data(), out.size()});
    return ERR_OK;
  }

  void forget(Conn* c) {
    if (!c->who.empty()) spdlog::debug("tcp closed: {}", c->who);
    if (c->pending) pbuf_free(c->pending);
    if (c->sock >= 0) {
      io->unwatch(c->sock);
      ::close(c->sock);
    }
    conns.erase(c);
    open_tuples.erase(c->key);
    --apps[c->app].open;
    ++counters.tcp_closed;
    delete c;
  }

  // Resets the client's connection. lwIP frees a TIME_WAIT pcb on abort
  // without calling the error callback, so that case is closed instead.
  void abort(Conn* c) {
    if (c->pcb->state == TIME_WAIT)
      close(c);
    else
      tcp_abort(c->pcb);  // on_tcp_err frees c
  }

  // Closes our side once everything queued has been handed to lwIP.
  void close(Conn* c) {
    tcp_arg(c->pcb, nullptr);
    tcp_recv(c->pcb, nullptr);
    tcp_sent(c->pcb, nullptr);
    tcp_err(c->pcb, nullptr);
    if (tcp_close(c->pcb) != ERR_OK) tcp_abort(c->pcb);
    forget(c);
  }

  // Forward, client to backend: send what lwIP delivered, acknowledging
  // (opening the client's window for) only what the socket took. Returns
  // false when it had to abort the connection (lwIP callbacks then return
  // ERR_ABRT, as lwIP requires).
  bool to_backend(Conn* c) {
    while (!c->preamble.empty()) {
      ssize_t n =
          ::send(c->sock, c->preamble.data(), c->preamble.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) break;
      c->preamble.erase(0, static_cast<size_t>(n));
    }
    while (c->preamble.empty() && c->pending) {
      ssize_t n =
          ::send(c->sock, c->pending->payload, c->pending->len, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        abort(c);  // backend gone: the client gets a RST
        return false;
      }
      consumed(c, static_cast<u16_t>(n));
    }
    bool blocked = !c->preamble.empty() || c->pending;
    if (!blocked && c->fin_seen) ::shutdown(c->sock, SHUT_WR);
    rewatch(c, blocked);
    return true;
  }

  // Forward, backend to client: read only as much as lwIP can queue.
  enum class Outcome { alive, aborted };
  Outcome from_backend(Conn* c) {
    for (;;) {
      if (!c->from_backend.empty()) {
        u16_t n = static_cast<u16_t>(
            std::min<size_t>({c->from_backend.size(), send_room(c->pcb), 0xffff}));
        if (n == 0 || tcp_write(c->pcb, c->from_backend.data(), n, TCP_WRITE_FLAG_COPY) != ERR_OK)
          break;
        c->from_backend.erase(0, n);
        continue;
      }
      if (c->backend_fin || send_room(c->pcb) == 0) break;
      char buf[kRelayChunk];
      size_t want = std::min<size_t>(sizeof buf, send_room(c->pcb));
      ssize_t n = ::recv(c->sock, buf, want, MSG_DONTWAIT);
      if (n > 0) {
        c->from_backend.assign(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        c->backend_fin = true;
        break;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      abort(c);
      return Outcome::aborted;
    }
    tcp_output(c->pcb);
    if (c->backend_fin && c->from_backend.empty() && !c->sent_fin) {
      c->sent_fin = true;
      tcp_shutdown(c->pcb, 0, 1);  // pass the backend's FIN on
    }
    if (c->sent_fin && c->fin_seen && !c->pending && c->sock >= 0) {
      // Both ways are done with the backend. lwIP may still hold data for
      // the client: it finishes on its own (LAST_ACK, then on_tcp_err with
      // ERR_CLSD frees c). tcp_close would stop its inactivity timer from
      // seeing the client's ACKs and cut a slow client off after 2 MSL.
      io->unwatch(c->sock);
      ::close(c->sock);
      c->sock = -1;
      return Outcome::alive;
    }
    if (c->sock < 0) return Outcome::alive;
    rewatch(c, !c->preamble.empty() || c->pending);
    return Outcome::alive;
  }

  // Watch the backend for what we can use now: input only while lwIP has
  // room (back-pressure towards the backend), output only while blocked.
  void rewatch(Conn* c, bool want_out) {
    uint32_t ev = 0;
    if (!c->backend_fin && send_room(c->pcb) > 0) ev |= EPOLLIN;
    if (want_out) ev |= EPOLLOUT;
    if (ev == 0 && c->backend_fin) {
      // Nothing left to read or write: epoll would still report the hang-up,
      // again and again.
      io->unwatch(c->sock);
      return;
    }
    io->watch(c->sock, ev, [this, c](uint32_t ready) {
      if (ready & EPOLLERR) {
        abort(c);
        return;
      }
      if (ready & EPOLLOUT) to_backend(c);
      // A hang-up reads as end of stream.
      if (conns.count(c) && (ready & (EPOLLIN | EPOLLHUP))) from_backend(c);
    });
  }

  // A SYN for a forward app: connect to its backend first; lwIP sees the
  // SYN (and, for a cookie handshake, the client's ACK) once the backend
  // has accepted.
  void hold_syn(std::vector<uint8_t> syn, std::vector<uint8_t> ack, const Tuple& key,
                uint16_t app) {
    const vpm::Endpoint& backend = *rules.config().apps[app].forward;
    sockaddr_storage ss;
    socklen_t len = vpm::to_sockaddr(backend, ss);
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 ||
        (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno != EINPROGRESS)) {
      if (fd >= 0) ::close(fd);
      refuse(Held{std::move(syn), -1, app, 0, std::move(ack)});
      return;
    }
    connecting[key] = Held{std::move(syn), fd, app, now_ms(), std::move(ack)};
    io->watch(fd, EPOLLOUT, [this, key](uint32_t) { backend_answered(key); });
  }

  void backend_answered(const Tuple& key) {
    auto it = connecting.find(key);
    if (it == connecting.end()) return;
    Held c = std::move(it->second);
    connecting.erase(it);
    io->unwatch(c.sock);
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(c.sock, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      ::close(c.sock);
      refuse(c);
      return;
    }
    apps[c.app].backend_up = 1;
    c.started_ms = now_ms();
    std::vector<uint8_t> syn = std::move(c.syn), ack = std::move(c.ack);
    admitted[key] = std::move(c);
    if (ack.empty())
      deliver(syn);  // now lwIP may complete the handshake
    else
      complete_handshake(syn, ack);
  }

  // Tells the client of a held SYN that its app's backend will not answer.
  // A client past a cookie handshake is reset through its ACK's numbers.
  void refuse(const Held& held) {
    ++counters.backend_connect_failures;
    ++apps[held.app].backend_failures;
    apps[held.app].backend_up = 0;
    std::vector<uint8_t> rst;
    if (vpm::build_refusal(held.ack.empty() ? held.syn : held.ack, rst)) {
      ++counters.packets_out;
      sink({rst.data(), rst.size()});
    }
  }

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
  Endpoint* endpoint_for(const vpm::PacketView& v, vpm::Proto proto, uint16_t app) {
    auto it = by_port.find({v.dst(), v.dst_port(), proto});
    Endpoint* ep = it == by_port.end() ? nullptr : it->second;
    if (!per_connection || app == vpm::kNoApp || !accepting) return ep;
    if (!ep) {
      int vi = rules.find_vaddr(v.dst());
      uint16_t p1 =
          vi < 0 || !rules.hidden(v.dst_port()) ? 0 : rules.p1_of(vi, proto, v.dst_port());
      if (p1 == 0 || !(ep = bind(v.dst(), p1, v.dst_port(), proto))) return nullptr;
    }
    ep->apps.assign(1, app);
    return ep;
  }

  // A new SYN for the 4-tuple of a pcb in TIME_WAIT: lwIP would answer
  // with an ACK and keep the client waiting for 2 MSL. Like Linux (RFC 6191
  // without timestamps), let the new connection in when its sequence number
  // is past the old one's (Linux clients' ISNs grow with time).
  void reuse_time_wait(const vpm::PacketView& v) {
    uint32_t seq = vpm::load32(v.l4_ptr() + 4);
    for (tcp_pcb* pcb = tcp_tw_pcbs; pcb; pcb = pcb->next) {
      if (pcb->local_port != v.dst_port() || pcb->remote_port != v.src_port() ||
          from_lwip(&pcb->remote_ip) != v.src() || from_lwip(&pcb->local_ip) != v.dst())
        continue;
      if (TCP_SEQ_GT(seq, pcb->rcv_nxt)) tcp_abort(pcb);  // no callbacks: its Conn is gone
      return;
    }
  }

  // Each TIME_WAIT pcb costs every SYN a comparison (and each removal a
  // walk): keep the newest kMaxTimeWait (lwIP adds them at the list head).
  void limit_time_wait() {
    size_t n = 0;
    for (tcp_pcb* pcb = tcp_tw_pcbs; pcb; pcb = pcb->next) {
      if (++n < kMaxTimeWait) continue;
      while (pcb->next) tcp_abort(pcb->next);
      return;
    }
  }

  // One packet in. A new SYN is given its app here, and held while a
  // forward app's backend is connected, or answered with a cookie when
  // too many handshakes are pending; everything else goes to lwIP.
  void arrive(std::span<uint8_t> packet, uint16_t flow_app, bool verified) {
    vpm::PacketView v;
    if (vpm::parse_packet(packet, v) == vpm::Drop::none && v.has_l4) {
      uint8_t flags = v.proto == vpm::ipproto::tcp ? v.l4_ptr()[13] : 0;
      bool syn = (flags & 0x12) == 0x02;
      bool udp = v.proto == vpm::ipproto::udp;
      if (syn) reuse_time_wait(v);
      Endpoint* ep = syn || (udp && per_connection)
                         ? endpoint_for(v, syn ? vpm::Proto::tcp : vpm::Proto::udp, flow_app)
                         : nullptr;
      if (syn && ep && ep->listener) {
        Tuple key = make_tuple(v.src(), v.src_port(), v.dst(), v.dst_port());
        if (connecting.count(key)) return;  // its backend is still connecting
        if (!admitted.count(key)) {         // else a retransmission: lwIP knows it
          if (half_open() >= kMaxHalfOpen) return answer_with_cookie(v);
          uint16_t app = take_turn(ep);
          if (app == vpm::kNoApp) return;
          std::vector<uint8_t> copy(packet.begin(), packet.end());
          if (service_of(app) == Service::forward) return hold_syn(std::move(copy), {}, key, app);
          admitted[key] = Held{{}, -1, app, now_ms(), {}};
        }
      } else if (v.proto == vpm::ipproto::tcp && last_cookie_ms && cookie_segment(v, packet, flow_app)) {
        return;
      }
    }
    deliver(packet, verified);
  }

  // Too many handshakes pending: answer the SYN ourselves, keeping nothing.
  void answer_with_cookie(const vpm::PacketView& v) {
    uint64_t now = now_ms();
    uint32_t cookie = cookies.make(tcp_tuple(v), vpm::announced_mss(v), now);
    uint16_t mss = static_cast<uint16_t>(std::min<uint32_t>(TCP_MSS, mtu - (v.v6 ? 60u : 40u)));
    std::vector<uint8_t> synack;
    if (!vpm::build_syn_ack(v.bytes, cookie, mss, synack)) return;
    last_cookie_ms = now;
    ++counters.syn_cookies_sent;
    ++counters.packets_out;
    sink({synack.data(), synack.size()});
  }

  // A TCP segment while cookies are out. An ACK that acknowledges one of
  // them completes its handshake: lwIP gets the SYN the client sent, then
  // this ACK. What follows it while a forward app's backend is connected
  // is dropped (the client sends it again). False for the segments that
  // are lwIP's to take (or answer with a RST).
  bool cookie_segment(const vpm::PacketView& v, std::span<uint8_t> packet, uint16_t flow_app) {
    uint64_t now = now_ms();
    if (now - last_cookie_ms > 128000) {  // no cookie out there is still good
      last_cookie_ms = 0;
      return false;
    }
    Tuple key = make_tuple(v.src(), v.src_port(), v.dst(), v.dst_port());
    if (connecting.count(key)) return true;
    // Later segments of a connection a cookie opened still acknowledge it.
    if ((v.l4_ptr()[13] & 0x16) != 0x10 || open_tuples.count(key) || admitted.count(key))
      return false;
    auto mss = cookies.check(tcp_tuple(v), vpm::load32(v.l4_ptr() + 8) - 1, now);
    if (!mss) return false;
    Endpoint* ep = endpoint_for(v, vpm::Proto::tcp, flow_app);
    std::vector<uint8_t> syn;
    uint16_t app = ep && ep->listener ? take_turn(ep) : vpm::kNoApp;
    if (app == vpm::kNoApp || !vpm::build_opening_syn(packet, *mss, syn)) return false;
    ++counters.syn_cookies_accepted;
    ++apps[app].syn_cookies;
    std::vector<uint8_t> ack(packet.begin(), packet.end());
    if (service_of(app) == Service::forward) {
      hold_syn(std::move(syn), std::move(ack), key, app);
    } else {
      admitted[key] = Held{{}, -1, app, now, {}};
      complete_handshake(syn, ack);
    }
    return true;
  }

  // lwIP takes the client's SYN with the cookie as its own ISN (its
  // SYN-ACK, which the client has already, is not sent), then the ACK.
  void complete_handshake(std::span<const uint8_t> syn, std::span<const uint8_t> ack) {
    vpm::PacketView v;
    std::vector<uint8_t> copy(ack.begin(), ack.end());
    if (vpm::parse_packet(copy, v) != vpm::Drop::none) return;
    next_isn = vpm::load32(v.l4_ptr() + 8) - 1;
    silent = true;
    deliver(syn, true);
    silent = false;
    next_isn.reset();
    deliver(ack, true);
  }

  // Packets enter through the default netif, whose flags say what lwIP checks.
  void deliver(std::span<const uint8_t> packet, bool verified = false) {
    netif* first = netif_default;
    constexpr u16_t kTrusted =
        NETIF_CHECKSUM_ENABLE_ALL & ~(NETIF_CHECKSUM_CHECK_TCP | NETIF_CHECKSUM_CHECK_UDP);
    NETIF_SET_CHECKSUM_CTRL(first, verified ? kTrusted : NETIF_CHECKSUM_ENABLE_ALL);
    pbuf* p = pbuf_alloc(PBUF_RAW, static_cast<u16_t>(packet.size()), PBUF_RAM);
    if (!p) {
      ++counters.input_errors;
      return;
    }
    pbuf_take(p, packet.data(), static_cast<u16_t>(packet.size()));
    if (first->input(p, first) != ERR_OK) {
      pbuf_free(p);
      ++counters.input_errors;
    }
  }

  void udp_forward(Endpoint* ep, uint16_t app, pbuf* p, const ip_addr_t* addr, u16_t port);
  void expire(uint64_t now);

  // Data from the client that the endpoint has not passed on yet.
  void hold(Conn* c, pbuf* p) {
    c->pending_bytes += p->tot_len;
    if (c->pending)
      pbuf_cat(c->pending, p);
    else
      c->pending = p;
  }
  void consumed(Conn* c, u16_t n) {
    tcp_recved(c->pcb, n);
    c->pending_bytes -= n;
    c->pending = pbuf_free_header(c->pending, n);
  }

  // Echo: queue back what was read, as far as the send buffer allows, and
  // acknowledge only that much (the client's window is our back-pressure).
  void pump(Conn* c) {
    while (c->pending && send_room(c->pcb) > 0) {
      auto n = static_cast<u16_t>(std::min<size_t>(c->pending->len, send_room(c->pcb)));
      if (tcp_write(c->pcb, c->pending->payload, n, TCP_WRITE_FLAG_COPY) != ERR_OK) break;
      consumed(c, n);
    }
    tcp_output(c->pcb);
    if (!c->pending && c->fin_seen && !c->sent_fin) {
      // All echoed: our FIN follows the data; lwIP frees the pcb after the
      // client's last ACK and tells on_tcp_err (ERR_CLSD), which frees c.
      c->sent_fin = true;
      tcp_shutdown(c->pcb, 0, 1);
    }
  }
};

namespace {

err_t netif_out(netif* nif, pbuf* p) { return static_cast<Stack::Impl*>(nif->state)->emit(p); }
err_t netif_out4(netif* nif, pbuf* p, const ip4_addr_t*) { return netif_out(nif, p); }
err_t netif_out6(netif* nif, pbuf* p, const ip6_addr_t*) { return netif_out(nif, p); }

err_t netif_setup(netif* nif) {
  nif->output = netif_out4;
  nif->output_ip6 = netif_out6;
  nif->name[0] = 'v';
  nif->name[1] = 'p';
  return ERR_OK;
}

err_t on_tcp_recv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err) {
  auto* c = static_cast<Conn*>(arg);
  if (!c) {
    if (p) pbuf_free(p);
    return ERR_OK;
  }
  auto* s = c->stack;
  if (!p || err != ERR_OK) {  // the client closed its side
    c->fin_seen = true;
    if (p) pbuf_free(p);
    if (c->service == Service::echo)
      s->pump(c);
    else if (c->service == Service::forward) {
      if (!s->to_backend(c)) return ERR_ABRT;  // half-close towards the backend once all is sent
      // Both directions have ended: the pcb may already be in TIME_WAIT.
      if (c->sent_fin) s->close(c);
    } else
      s->close(c);
    return ERR_OK;
  }
  if ((c->service == Service::forward || c->service == Service::echo) && c->pending &&
      c->pending_bytes >= kPressedPending && stack_memory().pressed()) {
    // Memory is short and this connection holds enough it has not passed
    // on: lwIP keeps `p` and offers it again later, taking no more data
    // from this client meanwhile (its window stays shut).
    ++s->counters.memory_deferrals;
    return ERR_MEM;
  }
  switch (c->service) {
    case Service::forward:
      s->hold(c, p);
      return s->to_backend(c) ? ERR_OK : ERR_ABRT;
    case Service::echo:
      s->hold(c, p);
      s->pump(c);
      return ERR_OK;
    case Service::discard:
      tcp_recved(pcb, p->tot_len);
      pbuf_free(p);
      return ERR_OK;
    case Service::http_info: {
      size_t room = kMaxRequest - std::min(kMaxRequest, c->request.size());
      size_t take = std::min<size_t>(room, p->tot_len);
      size_t at = c->request.size();
      c->request.resize(at + take);
      pbuf_copy_partial(p, c->request.data() + at, static_cast<u16_t>(take), 0);
      tcp_recved(pcb, p->tot_len);
      pbuf_free(p);
      bool complete = c->request.find("\r\n\r\n") != std::string::npos || room == take;
      if (complete && !c->answered) {
        c->answered = true;
        std::string body =
            s->info_json(c->p1, c->p2, c->app, &pcb->remote_ip, pcb->remote_port, "tcp");
        std::string reply = fmt::format(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
            "Connection: close\r\n\r\n{}",
            body.size(), body);
        tcp_write(pcb, reply.data(), static_cast<u16_t>(reply.size()), TCP_WRITE_FLAG_COPY);
        s->close(c);  // FIN follows the reply
      }
      return ERR_OK;
    }
  }
  return ERR_OK;
}

err_t on_tcp_sent(void* arg, tcp_pcb*, u16_t) {
  auto* c = static_cast<Conn*>(arg);
  if (c && c->service == Service::echo) c->stack->pump(c);
  if (c && c->service == Service::forward &&
      c->stack->from_backend(c) == Stack::Impl::Outcome::aborted)
    return ERR_ABRT;
  return ERR_OK;
}

void on_tcp_err(void* arg, err_t) {
  // lwIP has freed the pcb already (reset, or aborted).
  if (auto* c = static_cast<Conn*>(arg)) c->stack->forget(c);
}

err_t on_tcp_accept(void* arg, tcp_pcb* pcb, err_t err) {
  auto* ep = static_cast<Endpoint*>(arg);
  if (err != ERR_OK || !pcb) return ERR_VAL;
  auto* s = ep->stack;
  // arrive() chose the app when the SYN came (and made a forward app's
  // backend connection then).
  Tuple key = make_tuple(from_lwip(&pcb->remote_ip), pcb->remote_port, ep->vaddr, ep->p2);
  auto held = s->admitted.find(key);
  if (held == s->admitted.end()) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  auto* c = new Conn;
  c->stack = s;
  c->p1 = ep->p1;
  c->p2 = ep->p2;
  c->pcb = pcb;
  c->app = held->second.app;
  c->sock = held->second.sock;
  c->service = s->service_of(c->app);
  s->admitted.erase(held);
  const auto& app = s->rules.config().apps[c->app];
  if (app.proxy_protocol_v2)
    c->preamble = proxy_v2(true, from_lwip(&pcb->remote_ip), pcb->remote_port, ep->vaddr, ep->p1);
  c->key = key;
  s->conns.insert(c);
  s->open_tuples.insert(key);
  ++s->counters.tcp_accepted;
  ++s->apps[c->app].accepted;
  ++s->apps[c->app].open;
  if (spdlog::should_log(spdlog::level::debug)) {
    c->who = fmt::format("{} > {} ({}, p2 {})",
                         vpm::Endpoint{from_lwip(&pcb->remote_ip), pcb->remote_port}.str(),
                         vpm::Endpoint{ep->vaddr, ep->p1}.str(), app.name, ep->p2);
    spdlog::debug("tcp open: {}", c->who);
  }
  tcp_arg(pcb, c);
  tcp_recv(pcb, on_tcp_recv);
  tcp_sent(pcb, on_tcp_sent);
  tcp_err(pcb, on_tcp_err);
  tcp_nagle_disable(pcb);
  if (s->large_mss) pcb->mss = s->large_mss;  // the device cuts them to the client's MSS
  // The PROXY header, and start watching the backend.
  if (c->service == Service::forward && !s->to_backend(c)) return ERR_ABRT;
  return ERR_OK;
}

void on_udp_recv(void* arg, udp_pcb*, pbuf* p, const ip_addr_t* addr, u16_t port) {
  auto* ep = static_cast<Endpoint*>(arg);
  auto* s = ep->stack;
  ++s->counters.udp_datagrams;
  uint16_t app = s->take_turn(ep);
  if (app == vpm::kNoApp) {
    pbuf_free(p);
    return;
  }
  switch (s->service_of(app)) {
    case Service::forward:
      s->udp_forward(ep, app, p, addr, port);
      break;
    case Service::echo:
      s->udp_reply(ep, p, addr, port);
      break;
    case Service::discard:
      break;
    case Service::http_info: {
      std::string body = s->info_json(ep->p1, ep->p2, app, addr, port, "udp");
      pbuf* reply = pbuf_alloc(PBUF_TRANSPORT, static_cast<u16_t>(body.size()), PBUF_RAM);
      if (reply) {
        pbuf_take(reply, body.data(), static_cast<u16_t>(body.size()));
        s->udp_reply(ep, reply, addr, port);
        pbuf_free(reply);
      }
      break;
    }
  }
  pbuf_free(p);
}

}  // namespace

void Stack::Impl::udp_forward(Endpoint* ep, uint16_t app, pbuf* p, const ip_addr_t* addr,
                              u16_t port) {
  Tuple key = make_tuple(from_lwip(addr), port, ep->vaddr, ep->p2);
  auto it = udp_sessions.find(key);
  if (it == udp_sessions.end()) {
    const auto& a = rules.config().apps[app];
    sockaddr_storage ss;
    socklen_t len = vpm::to_sockaddr(*a.forward, ss);
    int fd = ::socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
      if (fd >= 0) ::close(fd);
      ++counters.backend_connect_failures;
      ++apps[app].backend_failures;
      apps[app].backend_up = 0;
      return;
    }
    UdpSession sess;
    sess.sock = fd;
    sess.client = *addr;
    sess.client_port = port;
    sess.ep = ep;
    it = udp_sessions.emplace(key, sess).first;
    io->watch(fd, EPOLLIN, [this, key](uint32_t) {
      auto s = udp_sessions.find(key);
      if (s == udp_sessions.end()) return;
      char buf[65536];
      for (;;) {
        ssize_t n = ::recv(s->second.sock, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) break;
        s->second.last_ms = now_ms();
        pbuf* reply = pbuf_alloc(PBUF_TRANSPORT, static_cast<u16_t>(n), PBUF_RAM);
        if (!reply) break;
        pbuf_take(reply, buf, static_cast<u16_t>(n));
        udp_reply(s->second.ep, reply, &s->second.client, s->second.client_port);
        pbuf_free(reply);
      }
    });
  }
  it->second.last_ms = now_ms();
  std::string data(p->tot_len, '\0');
  pbuf_copy_partial(p, data.data(), p->tot_len, 0);
  if (rules.config().apps[app].proxy_protocol_v2)
    data = proxy_v2(false, from_lwip(addr), port, ep->vaddr, ep->p1) + data;
  ::send(it->second.sock, data.data(), data.size(), MSG_DONTWAIT);
}

Endpoint* Stack::Impl::bind(const vpm::IpAddr& vaddr, uint16_t p1, uint16_t p2, vpm::Proto proto) {
  auto ep = std::make_unique<Endpoint>();
  ep->stack = this;
  ep->vaddr = vaddr;
  ep->p1 = p1;
  ep->p2 = p2;
  ep->proto = proto;
  ip_addr_t addr = to_lwip(vaddr);
  if (proto == vpm::Proto::tcp) {
    tcp_pcb* pcb = tcp_new_ip_type(IP_GET_TYPE(&addr));
    if (!pcb) return nullptr;
    ip_set_option(pcb,
                  SOF_REUSEADDR);  // connections of an earlier endpoint may linger (lwipopts.h)
    if (tcp_bind(pcb, &addr, p2) != ERR_OK) {
      tcp_close(pcb);
      return nullptr;
    }
    ep->listener = tcp_listen(pcb);
    if (!ep->listener) {
      tcp_close(pcb);  // lwIP keeps the unlistened pcb when it fails
      return nullptr;
    }
    tcp_arg(ep->listener, ep.get());
    tcp_accept(ep->listener, on_tcp_accept);
  } else {
    ep->udp = udp_new_ip_type(IP_GET_TYPE(&addr));
    if (!ep->udp) return nullptr;
    if (udp_bind(ep->udp, &addr, p2) != ERR_OK) {
      udp_remove(ep->udp);
      return nullptr;
    }
    udp_recv(ep->udp, on_udp_recv, ep.get());
  }
  Endpoint* raw = ep.get();
  by_port[{vaddr, p2, proto}] = raw;
  endpoints.push_back(std::move(ep));
  return raw;
}

void Stack::Impl::unbind(Endpoint* ep) {
  if (ep->listener) tcp_close(ep->listener);
  std::erase_if(udp_sessions, [&](const auto& session) {
    if (session.second.ep != ep) return false;
    io->unwatch(session.second.sock);
    ::close(session.second.sock);
    return true;
  });
  if (ep->udp) udp_remove(ep->udp);
  by_port.erase({ep->vaddr, ep->p2, ep->proto});
  std::erase_if(endpoints, [&](const auto& owned) { return owned.get() == ep; });
}

void Stack::Impl::sync_netifs() {
  std::set<vpm::IpAddr> wanted;
  for (const auto& v : rules.vaddrs()) wanted.insert(v.addr);
  std::erase_if(netifs, [&](auto& held) {
    if (wanted.count(held.first)) return false;
    netif_remove(held.second.get());  // nothing listens there any more
    return true;
  });
  for (const auto& addr : wanted) {
    if (netifs.count(addr)) continue;
    auto nif = std::make_unique<netif>();
    ip_addr_t a = to_lwip(addr);
    if (addr.is_v4()) {
      ip4_addr_t mask, gw;
      IP4_ADDR(&mask, 255, 255, 255, 255);
      ip4_addr_set_zero(&gw);
      netif_add(nif.get(), ip_2_ip4(&a), &mask, &gw, this, netif_setup, ip_input);
    } else {
      netif_add_noaddr(nif.get(), this, netif_setup, ip_input);
      netif_ip6_addr_set(nif.get(), 0, ip_2_ip6(&a));
      netif_ip6_addr_set_state(nif.get(), 0, IP6_ADDR_PREFERRED);
    }
    nif->mtu = mtu;
    netif_set_link_up(nif.get());
    netif_set_up(nif.get());
    netifs[addr] = std::move(nif);
  }
  // Replies to clients leave through the default netif; any one will do.
  netif_set_default(netifs.empty() ? nullptr : netifs.begin()->second.get());
}

std::string Stack::Impl::sync_endpoints() {
  if (per_connection) return "";  // bound as p2s are first used (arrive())
  const auto& configured = rules.config().apps;
  std::set<Endpoint*> kept;
  std::string failed;
  for (const auto& l : rules.listens()) {
    for (size_t a = 0; a < l.p2_of_app.size(); ++a) {
      uint16_t p2 = l.p2_of_app[a];
      if (p2 == 0) continue;
      auto it = by_port.find({l.vaddr, p2, l.proto});
      Endpoint* ep = it != by_port.end() ? it->second : bind(l.vaddr, l.p1, p2, l.proto);
      if (!ep) {
        failed = fmt::format("cannot bind {}/{} in the stack", vpm::Endpoint{l.vaddr, p2}.str(),
                             vpm::proto_name(l.proto));
        continue;
      }
      if (kept.insert(ep).second) {
        ep->p1 = l.p1;
        ep->apps.clear();
        ep->draining.clear();
      }
      (configured[a].draining ? ep->draining : ep->apps).push_back(static_cast<uint16_t>(a));
    }
  }
  std::vector<Endpoint*> gone;
  for (auto& ep : endpoints)
    if (!kept.count(ep.get())) gone.push_back(ep.get());
  for (Endpoint* ep : gone) unbind(ep);
  return failed;
}

void Stack::Impl::expire(uint64_t now) {
  std::erase_if(connecting, [&](const auto& held) {
    const Held& c = held.second;
    if (now - c.started_ms < kBackendConnectMs) return false;
    io->unwatch(c.sock);
    ::close(c.sock);
    refuse(c);  // the backend never answered
    return true;
  });
  // A handshake the client never completed (and its backend connection).
  std::erase_if(admitted, [&](const auto& held) {
    if (now - held.second.started_ms < kHandshakeMs) return false;
    if (held.second.sock >= 0) ::close(held.second.sock);
    return true;
  });
  uint64_t idle = rules.config().timeouts.udp_ms;
  std::erase_if(udp_sessions, [&](const auto& session) {
    if (now - session.second.last_ms < idle) return false;
    io->unwatch(session.second.sock);
    ::close(session.second.sock);
    ++counters.udp_sessions_expired;
    return true;
  });
}

Stack::Stack(const vpm::Ruleset& rules, uint32_t mtu, PacketSink sink, IoLoop* io)
    : impl_(std::make_unique<Impl>(rules, std::move(sink))) {
  impl_->io = io;
  tcp_isn_source() = [s = impl_.get()](const ip_addr_t* local, uint16_t local_port,
                                       const ip_addr_t* remote, uint16_t remote_port) {
    return s->isn(local, local_port, remote, remote_port);
  };
  static bool initialised = false;
  if (!initialised) {
    lwip_init();
    initialised = true;
  }
  const auto& cfg = rules.config();
  impl_->per_connection = cfg.vpm.allocation == vpm::Allocation::per_connection;
  for (const auto& app : cfg.apps)
    if (app.forward && !io)
      throw std::runtime_error("app '" + app.name + "': forward endpoints need an event loop");

  impl_->mtu = static_cast<u16_t>(std::min<uint32_t>(mtu, 65535));
  stack_memory().limit = size_t{cfg.vpm.stack_memory_mb} << 20;
  impl_->sync_netifs();
  if (auto failed = impl_->sync_endpoints(); !failed.empty()) throw std::runtime_error(failed);
}

Stack::~Stack() {
  std::vector<Conn*> open(impl_->conns.begin(), impl_->conns.end());
  for (Conn* c : open) tcp_abort(c->pcb);  // calls on_tcp_err, which frees c
  for (auto& [key, c] : impl_->connecting) {
    impl_->io->unwatch(c.sock);
    ::close(c.sock);
  }
  for (auto& [key, c] : impl_->admitted)
    if (c.sock >= 0) ::close(c.sock);
  for (auto& [key, u] : impl_->udp_sessions) {
    impl_->io->unwatch(u.sock);
    ::close(u.sock);
  }
  for (auto& ep : impl_->endpoints) {
    if (ep->listener) tcp_close(ep->listener);
    if (ep->udp) udp_remove(ep->udp);
  }
  for (auto& [addr, nif] : impl_->netifs) netif_remove(nif.get());
  tcp_isn_source() = nullptr;
}

void Stack::input(std::span<uint8_t> packet, uint16_t app, bool verified) {
  ++impl_->counters.packets_in;
  if (packet.empty() || packet.size() > 65535 || !netif_default) {
    ++impl_->counters.input_errors;
    return;
  }
  impl_->arrive(packet, app, verified);
}

void Stack::poll() {
  sys_check_timeouts();
  impl_->limit_time_wait();
  if (impl_->io) impl_->expire(now_ms());
}

// Set per connection, above TCP_MSS: lwIP's segment arithmetic is 16-bit
// but holds for any MSS whose segment, with 80 bytes of IP and TCP headers
// and options, still fits a 64 KiB packet and the netif's MTU. (TCP_MSS
// itself is capped by a sanity check about the socket API's low-water mark,
// which we do not use.)
void Stack::send_large_segments() {
  uint32_t mtu = impl_->mtu;
  impl_->large_mss = static_cast<uint16_t>(std::clamp<uint32_t>(mtu, 100 + TCP_MSS, 65100) - 100);
}

std::string Stack::reload(const std::vector<uint16_t>& app_of) {
  Impl& s = *impl_;
  for (const auto& app : s.rules.config().apps)
    if (app.forward && !s.io) return "app '" + app.name + "': forward endpoints need an event loop";
  // Every app a connection belongs to is kept (the caller counted them
  // with connections_per_app()), so these never become kNoApp.
  auto remap = [&](uint16_t& app) { app = app_of.at(app); };
  for (Conn* c : s.conns) remap(c->app);
  for (auto& held : s.connecting) remap(held.second.app);
  // A handshake lwIP has not completed counts for its app through the
  // engine's flow; one whose app is gone was reset or abandoned by now.
  for (auto& held : s.admitted)
    held.second.app = held.second.app < app_of.size() ? app_of[held.second.app] : vpm::kNoApp;
  std::erase_if(s.admitted, [&](const auto& held) {
    if (held.second.app != vpm::kNoApp) return false;
    if (held.second.sock >= 0) ::close(held.second.sock);
    return true;
  });
  std::vector<AppStackCounters> counters(s.rules.config().apps.size());
  for (size_t i = 0; i < app_of.size() && i < s.apps.size(); ++i)
    if (app_of[i] != vpm::kNoApp) counters[app_of[i]] = s.apps[i];
  s.apps = std::move(counters);
  stack_memory().limit = size_t{s.rules.config().vpm.stack_memory_mb} << 20;
  s.sync_netifs();
  if (s.per_connection)  // endpoints are lent to the app of the flow holding them
    for (auto& ep : s.endpoints) {
      std::erase_if(ep->apps, [&](uint16_t& app) {
        app = app < app_of.size() ? app_of[app] : vpm::kNoApp;
        return app == vpm::kNoApp;
      });
    }
  return s.sync_endpoints();
}

std::vector<size_t> Stack::connections_per_app() const {
  std::vector<size_t> n(impl_->apps.size());
  for (Conn* c : impl_->conns) ++n[c->app];
  for (auto& held : impl_->connecting) ++n[held.second.app];
  return n;
}

void Stack::stop_accepting() {
  impl_->accepting = false;
  for (auto& ep : impl_->endpoints) {
    if (ep->listener) tcp_close(ep->listener);
    ep->listener = nullptr;
  }
}

size_t Stack::half_open() const { return impl_->half_open(); }

size_t Stack::open_connections() const { return impl_->conns.size() + impl_->connecting.size(); }

const std::vector<AppStackCounters>& Stack::app_counters() const { return impl_->apps; }

const StackCounters& Stack::counters() const {
  impl_->counters.lwip_asserts = lwip_assert_count();
  return impl_->counters;
}

}  // namespace stack
