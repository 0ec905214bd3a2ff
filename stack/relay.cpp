// The relay to a host socket (a forward backend or an exec'd instance): TCP spliced, UDP sessions.
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

#include "stack_impl.hpp"

namespace stack {

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

int Stack::Impl::open_relay(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client,
                            uint16_t cport, const vpm::IpAddr& vaddr, uint16_t p1) {
  const auto& a = rules.config().apps[app];
  if (!a.forward) return instances ? instances->open(app, proto, client, cport, vaddr, p1) : -1;
  sockaddr_storage ss;
  socklen_t len = vpm::to_sockaddr(*a.forward, ss);
  int type = proto == vpm::Proto::tcp ? SOCK_STREAM : SOCK_DGRAM;
  int fd = ::socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0 &&
      (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 || errno == EINPROGRESS))
    return fd;
  if (fd >= 0) ::close(fd);
  return -1;
}

int Stack::Impl::open_relay_in_stream(Endpoint* ep, uint16_t& app, vpm::Proto proto,
                                      const vpm::IpAddr& client, uint16_t cport) {
  int fd = open_relay(app, proto, client, cport, ep->vaddr, ep->p1);
  if (fd >= 0 || service_of(app) != Service::exec) return fd;
  for (uint16_t other : ep->apps) {
    if (other == app || service_of(other) != Service::exec) continue;
    fd = open_relay(other, proto, client, cport, ep->vaddr, ep->p1);
    if (fd >= 0) {
      app = other;
      return fd;
    }
  }
  return -1;
}

void Stack::Impl::close_relay(int fd) {
  io->closing(fd);
  if (instances) instances->closing(fd);
  ::close(fd);
}

// Forward, client to backend: send what lwIP delivered, acknowledging
// (opening the client's window for) only what the socket took. Returns
// false when it had to abort the connection (lwIP callbacks then return
// ERR_ABRT, as lwIP requires).
bool Stack::Impl::to_backend(Conn* c) {
  if (c->sock < 0) return true;  // done with the backend already
  while (!c->preamble.empty()) {
    ssize_t n =
        ::send(c->sock, c->preamble.data(), c->preamble.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) break;
    c->preamble.erase(0, static_cast<size_t>(n));
  }
  while (c->preamble.empty() && c->pending) {
    // The whole chain in one system call (as far as kMaxIov pbufs).
    iovec iov[kMaxIov];
    msghdr msg{};
    msg.msg_iov = iov;
    for (pbuf* q = c->pending; q && msg.msg_iovlen < kMaxIov; q = q->next)
      iov[msg.msg_iovlen++] = {q->payload, q->len};
    ssize_t n = ::sendmsg(c->sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      abort(c);  // backend gone: the client gets a RST
      return false;
    }
    consumed(c, static_cast<size_t>(n));
  }
  if (c->preamble.empty() && !c->pending && c->fin_seen) {
    if (c->sent_fin) {
      // The backend ended first: both ways are done, and close() sends
      // its FIN (what it sent has all been read, so no RST).
      close_relay(c->sock);
      c->sock = -1;
    } else {
      ::shutdown(c->sock, SHUT_WR);
    }
  }
  return true;
}

Stack::Impl::Outcome Stack::Impl::from_backend(Conn* c) {
  bool drained = false;
  for (;;) {
    if (!c->from_backend.empty()) {
      u16_t n =
          static_cast<u16_t>(std::min<size_t>({c->from_backend.size(), send_room(c->pcb), 0xffff}));
      if (n == 0 || tcp_write(c->pcb, c->from_backend.data(), n, TCP_WRITE_FLAG_COPY) != ERR_OK)
        break;
      c->from_backend.erase(0, n);
      continue;
    }
    if (c->backend_fin || drained || c->sock < 0 || send_room(c->pcb) == 0) break;
    char buf[kRelayChunk];
    size_t want = std::min<size_t>(sizeof buf, send_room(c->pcb));
    ssize_t n = ::recv(c->sock, buf, want, MSG_DONTWAIT);
    if (n > 0) {
      c->from_backend.assign(buf, static_cast<size_t>(n));
      // A read that did not fill `buf` took all there was, and no recv
      // need ask again: what comes later is an edge of its own. If epoll
      // has reported the backend's FIN, everything before it was queued,
      // so this was the end.
      if (static_cast<size_t>(n) < want) {
        drained = true;
        c->backend_fin = c->backend_hung_up;
      }
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
  if (c->backend_fin && c->from_backend.empty() && !c->sent_fin) {
    // Pass the backend's FIN on, before tcp_output: lwIP sets it on the
    // last segment not yet sent, so a reply and its end leave as one packet.
    c->sent_fin = true;
    tcp_shutdown(c->pcb, 0, 1);
  }
  tcp_output(c->pcb);
  if (c->sent_fin && c->fin_seen && !c->pending && c->sock >= 0) {
    // Both ways are done with the backend. lwIP may still hold data for
    // the client: it finishes on its own (LAST_ACK, then on_tcp_err with
    // ERR_CLSD frees c). tcp_close would stop its inactivity timer from
    // seeing the client's ACKs and cut a slow client off after 2 MSL.
    close_relay(c->sock);
    c->sock = -1;
    return Outcome::alive;
  }
  return Outcome::alive;
}

// Edge-triggered (kRelayEvents, set by hold_syn for the connection's
// life): epoll reports what changed, and to_backend and from_backend go on
// until the socket (or lwIP) has no more. What stops them resumes without
// epoll: lwIP's sent callback reads again once it has room (back-pressure
// towards the backend), and new client data is sent as it comes.
void Stack::Impl::watch_backend(Conn* c) {
  io->watch(c->sock, kRelayEvents, [this, c](uint32_t ready) {
    if (ready & EPOLLERR) {
      abort(c);
      return;
    }
    if ((ready & EPOLLOUT) && (c->pending || !c->preamble.empty()) && !to_backend(c)) return;
    if (ready & (EPOLLRDHUP | EPOLLHUP)) c->backend_hung_up = true;
    if (conns.count(c) && (ready & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) from_backend(c);
  });
}

void Stack::Impl::udp_forward(Endpoint* ep, uint16_t app, pbuf* p, const ip_addr_t* addr,
                              u16_t port) {
  Tuple key = make_tuple(from_lwip(addr), port, ep->vaddr, ep->p2);
  auto it = udp_sessions.find(key);
  if (it == udp_sessions.end()) {
    int fd = open_relay_in_stream(ep, app, vpm::Proto::udp, from_lwip(addr), port);
    if (fd < 0) {
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
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
          // The backend's port is closed (ICMP port unreachable): the
          // next datagram opens a session to it, or to another instance.
          if (instances) instances->refused(s->second.sock);
          close_relay(s->second.sock);
          udp_sessions.erase(s);
          return;
        }
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

void Stack::Impl::expire_udp_sessions(uint64_t now) {
  uint64_t idle = rules.config().timeouts.udp_ms;
  std::erase_if(udp_sessions, [&](const auto& session) {
    if (now - session.second.last_ms < idle) return false;
    close_relay(session.second.sock);
    ++counters.udp_sessions_expired;
    return true;
  });
}

}  // namespace stack
