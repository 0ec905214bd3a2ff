// libvpmtun-app.so: the application library that `vpmtun exec` preloads
// into an unmodified program (vpm/app_wire.hpp has the protocol).
//
// Theory of operation. bind() of a TCP or UDP port the app listens on
// (takes_bind, from VPMTUN_LISTEN) binds an anonymous loopback port
// instead and registers it with the daemon over a connection of its own,
// which stays open as long as the socket may (its descriptor is moved out of
// the program's way and survives exec). Every other
// call is passed through. What the kernel then says is translated, never
// remembered: a peer that is the daemon's loopback relay port L becomes the
// client written in the app's peer table (accept, accept4, getpeername,
// recvfrom, recvmsg, recvmmsg); a local address that is a registered real
// port R becomes the address and p1 the program asked for, or, on an
// accepted connection, the virtual address and p1 the client used
// (getsockname); a UDP reply to a client goes to its relay port
// (sendto, sendmsg, sendmmsg). So the answers hold across fork, exec, dup
// and threads.
//
// Cooperative mode: connect() to one of the app's remotes is negotiated
// first (dial.cpp).
//
// Never fail open: when the daemon cannot be reached or refuses, bind()
// fails (EACCES when the user is not allowed, EADDRNOTAVAIL otherwise) and
// a line on stderr names the reason; the real p1 is never bound.
//
// close(), close_range(), closefrom(), dup2() and dup3() leave the
// registration descriptors alone (a dup2 onto one moves it first), so a
// program that closes "all other descriptors" does not end its own
// registration; a program exec'd with registrations finds them by their
// abstract socket names when it starts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "library.hpp"

using namespace vpm::appwire;

namespace vpmtun_app {

// ---- socket addresses ----

Inet parse(const sockaddr* sa, socklen_t len) {
  Inet out;
  if (!sa) return out;
  if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
    out.addr = vpm::IpAddr::v4(reinterpret_cast<const uint8_t*>(&a->sin_addr));
    out.port = ntohs(a->sin_port);
    out.ok = true;
  } else if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    out.addr = vpm::IpAddr::v6(reinterpret_cast<const uint8_t*>(&a->sin6_addr));
    out.port = ntohs(a->sin6_port);
    out.ipv6 = out.ok = true;
  }
  return out;
}

// Writes `addr`:`port` in the family of the socket (`ipv6`) into the
// caller's buffer, as the kernel would: truncated to *len, *len set to the
// full size. False when the address does not fit the family (an IPv6
// client for an AF_INET socket cannot happen, but is then left as it was).
bool store(bool ipv6, const vpm::IpAddr& addr, uint16_t port, sockaddr* out, socklen_t* len) {
  sockaddr_storage ss{};
  socklen_t size;
  if (ipv6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    std::memcpy(&a.sin6_addr, addr.bytes.data(), 16);
    size = sizeof a;
  } else {
    if (!addr.is_v4()) return false;
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    std::memcpy(&a.sin_addr, addr.bytes.data() + 12, 4);
    size = sizeof a;
  }
  if (out && len) {
    std::memcpy(out, &ss, std::min(*len, size));
    *len = size;
  }
  return true;
}

vpm::Proto proto_of_socket(int fd, bool* ok) {
  int type = 0;
  socklen_t len = sizeof type;
  *ok = ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
        (type == SOCK_STREAM || type == SOCK_DGRAM);
  return type == SOCK_DGRAM ? vpm::Proto::udp : vpm::Proto::tcp;
}

// A peer address the kernel returned for socket `fd`: if it is the
// daemon's relay port, the client it relays instead. The daemon writes a
// TCP relay's slot just after its connect() returns, and the handshake on
// loopback may complete (and the program accept) a moment before: a
// connection to a registered port whose slot is not there yet waits for it,
// up to kSlotWaitUs.
constexpr long kSlotWaitUs = 20000;
void translate_peer(int fd, vpm::Proto proto, sockaddr* addr, socklen_t* len, socklen_t given) {
  if (!addr || !len) return;
  Inet k = parse(addr, std::min(*len, given));
  if (!k.ok || !is_loopback(k.addr)) return;
  PeerTable t = table_or_ask();
  PeerSlot s = t.relay(proto, k.ipv6, k.port);
  if (!s.valid && proto == vpm::Proto::tcp && t.usable()) {
    sockaddr_storage me{};
    socklen_t mlen = sizeof me;
    REAL(getsockname);
    Inet m = real_getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) == 0
                 ? parse(reinterpret_cast<sockaddr*>(&me), mlen)
                 : Inet{};
    if (m.ok && t.bind(proto, m.ipv6, m.port).valid)
      for (long waited = 0; !s.valid && waited < kSlotWaitUs; waited += 50) {
        timespec pause{0, 50000};
        ::nanosleep(&pause, nullptr);
        s = t.relay(proto, k.ipv6, k.port);
      }
  }
  if (s.valid) {
    socklen_t room = given;
    if (store(k.ipv6, s.addr, s.port, addr, &room)) *len = room;
  }
}

// A UDP destination the program names: if it is a client relayed to this
// socket, the daemon's relay port for it.
bool reply_route(int fd, const sockaddr* to, socklen_t tolen, sockaddr_storage& out,
                 socklen_t& outlen) {
  Inet d = parse(to, tolen);
  if (!d.ok || is_loopback(d.addr) || !table().usable()) return false;
  sockaddr_storage me{};
  socklen_t mlen = sizeof me;
  REAL(getsockname);
  if (real_getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) < 0) return false;
  Inet m = parse(reinterpret_cast<sockaddr*>(&me), mlen);
  if (!m.ok || !is_loopback(m.addr)) return false;
  vpm::IpAddr client = d.addr;
  uint16_t relay = table().find_udp(m.ipv6, client, d.port, m.port);
  if (relay == 0) return false;
  outlen = sizeof out;
  return store(m.ipv6, m.ipv6 ? *vpm::IpAddr::parse("::1") : *vpm::IpAddr::parse("127.0.0.1"),
               relay, reinterpret_cast<sockaddr*>(&out), &outlen);
}

}  // namespace vpmtun_app

using namespace vpmtun_app;

// The library is built with hidden visibility; these are what it exports.
#pragma GCC visibility push(default)
extern "C" {

int bind(int fd, const sockaddr* addr, socklen_t len) {
  REAL(bind);
  const Settings& s = settings();
  Inet asked = parse(addr, len);
  if (!s.active || !asked.ok || asked.port == 0) return real_bind(fd, addr, len);
  bool ok = false;
  vpm::Proto proto = proto_of_socket(fd, &ok);
  if (!ok) return real_bind(fd, addr, len);
  // An AF_INET6 socket may name an IPv4 address as ::ffff:a.b.c.d: IpAddr
  // holds IPv4 that way already, so the rule sees the same address.
  if (s.valid && !takes_bind(s.listens, proto, asked.addr, asked.port))
    return real_bind(fd, addr, len);
  return take_bind(fd, proto, asked, addr->sa_family == AF_INET6);
}

int accept(int fd, sockaddr* addr, socklen_t* len) {
  REAL(accept);
  socklen_t given = len ? *len : 0;
  int r = real_accept(fd, addr, len);
  if (r >= 0 && settings().active) translate_peer(r, vpm::Proto::tcp, addr, len, given);
  return r;
}

int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  REAL(accept4);
  socklen_t given = len ? *len : 0;
  int r = real_accept4(fd, addr, len, flags);
  if (r >= 0 && settings().active) translate_peer(r, vpm::Proto::tcp, addr, len, given);
  return r;
}

int getpeername(int fd, sockaddr* addr, socklen_t* len) {
  REAL(getpeername);
  socklen_t given = len ? *len : 0;
  int r = real_getpeername(fd, addr, len);
  if (r == 0 && settings().active) {
    bool ok = false;
    vpm::Proto proto = proto_of_socket(fd, &ok);
    if (ok) translate_peer(fd, proto, addr, len, given);
    if (ok && proto == vpm::Proto::tcp) translate_dialed(addr, len, given);
  }
  return r;
}

int getsockname(int fd, sockaddr* addr, socklen_t* len) {
  REAL(getsockname);
  socklen_t given = len ? *len : 0;
  int r = real_getsockname(fd, addr, len);
  if (r != 0 || !settings().active || !addr || !len) return r;
  Inet k = parse(addr, std::min(*len, given));
  if (!k.ok || !is_loopback(k.addr)) return r;
  bool ok = false;
  vpm::Proto proto = proto_of_socket(fd, &ok);
  if (!ok) return r;
  PeerTable t = table_or_ask();
  PeerSlot bound = t.bind(proto, k.ipv6, k.port);
  if (!bound.valid) return r;
  vpm::IpAddr local = bound.addr;
  // A connection accepted from the relay: the virtual address it came to.
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  REAL(getpeername);
  if (real_getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0) {
    Inet p = parse(reinterpret_cast<sockaddr*>(&peer), plen);
    PeerSlot relay = p.ok ? t.relay(proto, p.ipv6, p.port) : PeerSlot{};
    if (relay.valid && relay.real_port == k.port) local = relay.vaddr;
  }
  socklen_t room = given;
  if (store(k.ipv6, local, bound.p1, addr, &room)) *len = room;
  return r;
}

ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len) {
  REAL(recvfrom);
  socklen_t given = len && addr ? *len : 0;
  ssize_t r = real_recvfrom(fd, buf, n, flags, addr, len);
  if (r >= 0 && addr && settings().active) translate_peer(fd, vpm::Proto::udp, addr, len, given);
  return r;
}

ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  REAL(recvmsg);
  socklen_t given = msg && msg->msg_name ? msg->msg_namelen : 0;
  ssize_t r = real_recvmsg(fd, msg, flags);
  if (r >= 0 && given && settings().active)
    translate_peer(fd, vpm::Proto::udp, static_cast<sockaddr*>(msg->msg_name), &msg->msg_namelen,
                   given);
  return r;
}

int recvmmsg(int fd, mmsghdr* msgs, unsigned int vlen, int flags, timespec* timeout) {
  REAL(recvmmsg);
  std::vector<socklen_t> given(vlen);
  for (unsigned i = 0; i < vlen; ++i)
    given[i] = msgs[i].msg_hdr.msg_name ? msgs[i].msg_hdr.msg_namelen : 0;
  int r = real_recvmmsg(fd, msgs, vlen, flags, timeout);
  if (settings().active)
    for (int i = 0; i < r; ++i)
      if (given[static_cast<size_t>(i)])
        translate_peer(fd, vpm::Proto::udp, static_cast<sockaddr*>(msgs[i].msg_hdr.msg_name),
                       &msgs[i].msg_hdr.msg_namelen, given[static_cast<size_t>(i)]);
  return r;
}

ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* to, socklen_t tolen) {
  REAL(sendto);
  sockaddr_storage relay;
  socklen_t rlen;
  if (to && settings().active && reply_route(fd, to, tolen, relay, rlen))
    return real_sendto(fd, buf, n, flags, reinterpret_cast<sockaddr*>(&relay), rlen);
  return real_sendto(fd, buf, n, flags, to, tolen);
}

ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  REAL(sendmsg);
  sockaddr_storage relay;
  socklen_t rlen;
  if (msg && msg->msg_name && settings().active &&
      reply_route(fd, static_cast<const sockaddr*>(msg->msg_name), msg->msg_namelen, relay, rlen)) {
    msghdr copy = *msg;
    copy.msg_name = &relay;
    copy.msg_namelen = rlen;
    return real_sendmsg(fd, &copy, flags);
  }
  return real_sendmsg(fd, msg, flags);
}

int sendmmsg(int fd, mmsghdr* msgs, unsigned int vlen, int flags) {
  REAL(sendmmsg);
  if (!settings().active) return real_sendmmsg(fd, msgs, vlen, flags);
  // Rewritten in place for the call, then restored: the caller's array is
  // not const, but its addresses are the caller's business afterwards.
  std::vector<sockaddr_storage> relays(vlen);
  std::vector<std::pair<void*, socklen_t>> saved(vlen);
  for (unsigned i = 0; i < vlen; ++i) {
    msghdr& h = msgs[i].msg_hdr;
    saved[i] = {h.msg_name, h.msg_namelen};
    socklen_t rlen;
    if (h.msg_name &&
        reply_route(fd, static_cast<const sockaddr*>(h.msg_name), h.msg_namelen, relays[i], rlen)) {
      h.msg_name = &relays[i];
      h.msg_namelen = rlen;
    }
  }
  int r = real_sendmmsg(fd, msgs, vlen, flags);
  for (unsigned i = 0; i < vlen; ++i)
    msgs[i].msg_hdr.msg_name = saved[i].first, msgs[i].msg_hdr.msg_namelen = saved[i].second;
  return r;
}

int close(int fd) {
  REAL(close);
  if (is_ours(fd)) return 0;  // the registration lives as long as the process
  return real_close(fd);
}

int close_range(unsigned int first, unsigned int last, int flags) {
  static const auto real_close_range =
      real<int (*)(unsigned int, unsigned int, int)>("close_range");
  auto call = [&](unsigned a, unsigned b) {
    if (real_close_range) return real_close_range(a, b, flags);
    return static_cast<int>(::syscall(SYS_close_range, a, b, flags));
  };
  // The ranges between our descriptors.
  unsigned from = first;
  for (unsigned fd = first; fd <= last && fd < static_cast<unsigned>(kMaxFd); ++fd) {
    if (!is_ours(static_cast<int>(fd))) continue;
    if (fd > from && call(from, fd - 1) < 0) return -1;
    from = fd + 1;
  }
  if (from <= last && from >= first) return call(from, last);
  return 0;
}

void closefrom(int lowfd) { close_range(static_cast<unsigned>(lowfd), ~0u, 0); }

int dup2(int oldfd, int newfd) {
  REAL(dup2);
  if (oldfd != newfd) clear_way(newfd);
  return real_dup2(oldfd, newfd);
}

int dup3(int oldfd, int newfd, int flags) {
  REAL(dup3);
  if (oldfd != newfd) clear_way(newfd);
  return real_dup3(oldfd, newfd, flags);
}

}  // extern "C"
#pragma GCC visibility pop
