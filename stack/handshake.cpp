// New connections: SYNs held for a backend, SYN cookies, TIME_WAIT reuse.
#include <netinet/in.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <utility>

#include "lwip/priv/tcp_priv.h"  // tcp_tw_pcbs: TIME_WAIT reuse and its limit
#include "vpmtun_hooks.h"
#include "stack_impl.hpp"
#include "vpm/refusal.hpp"

namespace stack {

vpm::SipKey Stack::Impl::random_key() {
  std::random_device rd;
  auto word = [&] { return uint64_t{rd()} << 32 | rd(); };
  return {word(), word()};
}

// RFC 6528, or the cookie a handshake completed with (lwIP's TCP_ISN hook).
uint32_t Stack::Impl::isn(const ip_addr_t* local, uint16_t local_port, const ip_addr_t* remote,
                          uint16_t remote_port) {
  if (next_isn) return *std::exchange(next_isn, std::nullopt);
  using namespace std::chrono;
  auto us = duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count();
  return cookies.isn({from_lwip(remote), from_lwip(local), remote_port, local_port},
                     static_cast<uint64_t>(us));
}

// A SYN for a forward app: connect to its backend first; lwIP sees the
// SYN (and, for a cookie handshake, the client's ACK) once the backend
// has accepted.
void Stack::Impl::hold_syn(std::vector<uint8_t> syn, std::vector<uint8_t> ack, const Tuple& key,
                           uint16_t app, uint16_t p1, uint8_t tries) {
  vpm::PacketView v;
  int fd = -1;
  if (vpm::parse_packet(syn, v) == vpm::Drop::none) {
    auto ep = by_port.find({v.dst(), v.dst_port(), vpm::Proto::tcp});
    fd = ep == by_port.end()
             ? open_relay(app, vpm::Proto::tcp, v.src(), v.src_port(), v.dst(), p1)
             : open_relay_in_stream(ep->second, app, vpm::Proto::tcp, v.src(), v.src_port());
  }
  if (fd < 0) {
    refuse(Held{std::move(syn), -1, app, 0, std::move(ack)});
    return;
  }
  connecting[key] = Held{std::move(syn), fd, app, now_ms(), std::move(ack), p1, tries};
  // Watched as the relay will watch it (edge-triggered), so that the
  // connection's one epoll_ctl is this one: the connect's outcome is an
  // edge; edges between it and lwIP's accept are ignored, and
  // on_tcp_accept reads what they announced.
  io->watch(fd, kRelayEvents, [this, key](uint32_t ready) { backend_answered(key, ready); });
}

void Stack::Impl::backend_answered(const Tuple& key, uint32_t ready) {
  auto it = connecting.find(key);
  if (it == connecting.end()) {
    // Connected; until lwIP accepts, what epoll reports is kept for it.
    if (auto held = admitted.find(key); held != admitted.end()) held->second.events |= ready;
    return;
  }
  if (!(ready & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  Held c = std::move(it->second);
  connecting.erase(it);
  // A connection that failed reports an error or a hang-up; asking which
  // costs a system call only then.
  int err = 0;
  socklen_t len = sizeof err;
  if (ready & (EPOLLERR | EPOLLHUP)) ::getsockopt(c.sock, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    if (instances) instances->refused(c.sock);
    close_relay(c.sock);
    // An exec'd instance that refuses has closed its socket (or not yet
    // called listen()): the next one in turn may take the client.
    if (service_of(c.app) == Service::exec && c.tries + 1 < kInstanceTries)
      return hold_syn(std::move(c.syn), std::move(c.ack), key, c.app, c.p1,
                      static_cast<uint8_t>(c.tries + 1));
    refuse(c);
    return;
  }
  apps[c.app].backend_up = 1;
  c.started_ms = now_ms();
  c.events = ready;
  std::vector<uint8_t> syn = std::move(c.syn), ack = std::move(c.ack);
  admitted[key] = std::move(c);
  if (ack.empty())
    deliver(syn);  // now lwIP may complete the handshake
  else
    complete_handshake(syn, ack);
}

// Tells the client of a held SYN that its app's backend will not answer.
// A client past a cookie handshake is reset through its ACK's numbers.
void Stack::Impl::refuse(const Held& held) {
  ++counters.backend_connect_failures;
  ++apps[held.app].backend_failures;
  apps[held.app].backend_up = 0;
  std::vector<uint8_t> rst;
  if (vpm::build_refusal(held.ack.empty() ? held.syn : held.ack, rst)) {
    ++counters.packets_out;
    sink({rst.data(), rst.size()});
  }
}

// A new SYN for the 4-tuple of a pcb in TIME_WAIT: lwIP would answer
// with an ACK and keep the client waiting for 2 MSL. Like Linux (RFC 6191
// without timestamps), let the new connection in when its sequence number
// is past the old one's (Linux clients' ISNs grow with time).
void Stack::Impl::reuse_time_wait(const vpm::PacketView& v) {
  uint32_t seq = vpm::load32(v.l4_ptr() + 4);
  ip_addr_t remote = to_lwip(v.src()), local = to_lwip(v.dst());
  tcp_pcb* pcb = vpmtun_tcp_tw_find(&remote, v.src_port(), &local, v.dst_port());
  if (pcb && TCP_SEQ_GT(seq, pcb->rcv_nxt)) tcp_abort(pcb);  // no callbacks: its Conn is gone
}

// Each TIME_WAIT pcb costs memory, and lwIP's slow timer visits each:
// keep the newest kMaxTimeWait (lwIP adds them at the list head).
void Stack::Impl::limit_time_wait() {
  if (vpmtun_tcp_tw_count() <= kMaxTimeWait) return;
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
void Stack::Impl::arrive(std::span<uint8_t> packet, uint16_t flow_app, bool verified) {
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
        if (half_open() >= kMaxHalfOpen / workers) return answer_with_cookie(v);
        uint16_t app = take_turn(ep);
        if (app == vpm::kNoApp) return;
        std::vector<uint8_t> copy(packet.begin(), packet.end());
        if (relayed(service_at(ep, app)))
          return hold_syn(std::move(copy), {}, key, app, ep->p1);
        admitted[key] = Held{{}, -1, app, now_ms(), {}};
      }
    } else if (v.proto == vpm::ipproto::tcp && last_cookie_ms &&
               cookie_segment(v, packet, flow_app)) {
      return;
    }
  }
  deliver(packet, verified);
}

// Too many handshakes pending: answer the SYN ourselves, keeping nothing.
void Stack::Impl::answer_with_cookie(const vpm::PacketView& v) {
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
bool Stack::Impl::cookie_segment(const vpm::PacketView& v, std::span<uint8_t> packet,
                                 uint16_t flow_app) {
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
  if (relayed(service_at(ep, app))) {
    hold_syn(std::move(syn), std::move(ack), key, app, ep->p1);
  } else {
    admitted[key] = Held{{}, -1, app, now, {}};
    complete_handshake(syn, ack);
  }
  return true;
}

// lwIP takes the client's SYN with the cookie as its own ISN (its
// SYN-ACK, which the client has already, is not sent), then the ACK.
void Stack::Impl::complete_handshake(std::span<const uint8_t> syn, std::span<const uint8_t> ack) {
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

void Stack::Impl::expire_handshakes(uint64_t now) {
  std::erase_if(connecting, [&](const auto& held) {
    const Held& c = held.second;
    if (now - c.started_ms < kBackendConnectMs) return false;
    close_relay(c.sock);
    refuse(c);  // the backend never answered
    return true;
  });
  // A handshake the client never completed (and its backend connection).
  std::erase_if(admitted, [&](const auto& held) {
    if (now - held.second.started_ms < kHandshakeMs) return false;
    if (held.second.sock >= 0) close_relay(held.second.sock);
    return true;
  });
}

}  // namespace stack
