// libvpmtun-app.so, cooperative mode: connect() to one of the app's
// remotes (VPMTUN_REMOTE) is negotiated by the daemon first.
//
// The socket is bound first, to the address the kernel would pick for
// that server and a port of its own, so the daemon can announce exactly
// the client address:port the server will see; it is passed to the daemon
// with the Dial, which reads that address from the kernel. Then the real
// connect() goes to the server's p2, in the program's own mode: a
// non-blocking socket returns EINPROGRESS as always (the negotiation, one
// round trip to the server's VPM, has happened inside the call). A refusal
// is ECONNREFUSED (for a non-blocking socket, through SO_ERROR after
// EINPROGRESS, as any refusal), a silent server ETIMEDOUT; the program
// never reaches p1 without its negotiation.
//
// getpeername() says vaddr:p1: the few (vaddr, p2) -> p1 this process has
// dialled are kept (a p2 stands for one p1 of one server, whatever the
// client port).
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "library.hpp"

using namespace vpm::appwire;

namespace vpmtun_app {

namespace {

constexpr size_t kMaxDialled = 1024;
std::mutex dialled_lock;
std::map<vpm::Endpoint, uint16_t> dialled;  // (vaddr, p2) -> p1

// The socket's own address, binding it first (to the address the kernel
// would use towards `addr`) if it has no port yet.
bool local_end(int fd, const sockaddr* addr, socklen_t len, bool family6, vpm::Endpoint& out) {
  REAL(getsockname);
  REAL(connect);
  REAL(bind);
  REAL(close);
  sockaddr_storage me{};
  socklen_t mlen = sizeof me;
  if (real_getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) < 0) return false;
  Inet m = parse(reinterpret_cast<sockaddr*>(&me), mlen);
  if (!m.ok) return false;
  if (m.port == 0 || is_wildcard(m.addr)) {
    // A datagram socket's connect() asks the routing table, and sends nothing.
    int probe = ::socket(family6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_storage src{};
    socklen_t slen = sizeof src;
    bool routed = probe >= 0 && real_connect(probe, addr, len) == 0 &&
                  real_getsockname(probe, reinterpret_cast<sockaddr*>(&src), &slen) == 0;
    if (probe >= 0) real_close(probe);
    if (!routed) return false;
    Inet s = parse(reinterpret_cast<sockaddr*>(&src), slen);
    if (m.port == 0) {
      socklen_t blen = sizeof src;
      if (!store(family6, s.addr, 0, reinterpret_cast<sockaddr*>(&src), &blen) ||
          real_bind(fd, reinterpret_cast<sockaddr*>(&src), blen) < 0)
        return false;
      mlen = sizeof me;
      if (real_getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) < 0) return false;
      m = parse(reinterpret_cast<sockaddr*>(&me), mlen);
    } else {
      m.addr = s.addr;
    }
  }
  out = {m.addr, m.port};
  return true;
}

// A non-blocking socket learns of a refusal as of any other: EINPROGRESS,
// then writability and SO_ERROR. So it connects to a loopback port that is
// bound but not listening, which the kernel refuses at once. -1 (errno
// left for the caller) if that cannot be arranged.
int refuse_later(int fd, bool family6, const vpm::IpAddr& local) {
  REAL(bind);
  REAL(connect);
  REAL(close);
  REAL(getsockname);
  bool v6 = family6 && !local.is_v4();
  const char* lo = v6 ? "::1" : "127.0.0.1";
  int closed = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage ss{};
  socklen_t slen = sizeof ss;
  store(v6, *vpm::IpAddr::parse(lo), 0, reinterpret_cast<sockaddr*>(&ss), &slen);
  bool ready = closed >= 0 && real_bind(closed, reinterpret_cast<sockaddr*>(&ss), slen) == 0 &&
               real_getsockname(closed, reinterpret_cast<sockaddr*>(&ss), &slen) == 0;
  int r = -1;
  if (ready) {
    Inet port = parse(reinterpret_cast<sockaddr*>(&ss), slen);
    sockaddr_storage to{};
    socklen_t tlen = sizeof to;
    store(family6, *vpm::IpAddr::parse(lo), port.port, reinterpret_cast<sockaddr*>(&to), &tlen);
    r = real_connect(fd, reinterpret_cast<sockaddr*>(&to), tlen);
  }
  if (closed >= 0) real_close(closed);
  return r < 0 && errno == EINPROGRESS ? 0 : -1;
}

}  // namespace

int dial(int fd, const Inet& server, const sockaddr* addr, socklen_t len) {
  vpm::Endpoint to{server.addr, server.port};
  vpm::Endpoint client;
  auto fail = [&](int err, const std::string& why) {
    complain("connect " + to.str() + " refused: " + why);
    bool nonblocking = ::fcntl(fd, F_GETFL) & O_NONBLOCK;
    if (err == ECONNREFUSED && nonblocking && client.port != 0 &&
        refuse_later(fd, server.ipv6, client.addr) == 0)
      err = EINPROGRESS;
    errno = err;
    return -1;
  };
  if (!local_end(fd, addr, len, server.ipv6, client))
    return fail(errno ? errno : EADDRNOTAVAIL, std::string("no local address towards it: ") +
                                                   std::strerror(errno));
  std::string why;
  int err = 0;
  int conn = open_daemon(false, &why, &err);
  if (conn < 0) return fail(ECONNREFUSED, why);
  std::optional<Message> answer;
  bool answered = exchange(conn, Dial{settings().app, client, to}, fd, answer, nullptr, &why);
  REAL(close);
  real_close(conn);
  if (!answered) return fail(ECONNREFUSED, why);
  const auto* d = std::get_if<Dialed>(&*answer);
  if (!d) return fail(ECONNREFUSED, "the daemon answered out of turn");
  if (d->status == Status::timed_out) return fail(ETIMEDOUT, d->reason);
  if (d->status != Status::ok || d->p2 == 0) return fail(ECONNREFUSED, d->reason);
  {
    std::lock_guard<std::mutex> g(dialled_lock);
    if (dialled.size() >= kMaxDialled) dialled.clear();
    dialled[{to.addr, d->p2}] = to.port;
  }
  sockaddr_storage p2{};
  socklen_t p2len = sizeof p2;
  store(server.ipv6, to.addr, d->p2, reinterpret_cast<sockaddr*>(&p2), &p2len);
  REAL(connect);
  return real_connect(fd, reinterpret_cast<sockaddr*>(&p2), p2len);
}

void translate_dialed(sockaddr* addr, socklen_t* len, socklen_t given) {
  if (!addr || !len || settings().remotes.empty()) return;
  Inet k = parse(addr, std::min(*len, given));
  if (!k.ok) return;
  uint16_t p1 = 0;
  {
    std::lock_guard<std::mutex> g(dialled_lock);
    auto it = dialled.find({k.addr, k.port});
    if (it == dialled.end()) return;
    p1 = it->second;
  }
  socklen_t room = given;
  if (store(k.ipv6, k.addr, p1, addr, &room)) *len = room;
}

}  // namespace vpmtun_app

using namespace vpmtun_app;

#pragma GCC visibility push(default)
extern "C" {

int connect(int fd, const sockaddr* addr, socklen_t len) {
  REAL(connect);
  const Settings& s = settings();
  Inet to = parse(addr, len);
  if (!s.active || s.remotes.empty() || !to.ok) return real_connect(fd, addr, len);
  bool ok = false;
  if (proto_of_socket(fd, &ok) != vpm::Proto::tcp || !ok) return real_connect(fd, addr, len);
  for (const auto& r : s.remotes)
    if (r.proto == vpm::Proto::tcp && r.vaddr == to.addr && r.p1 == to.port)
      return dial(fd, to, addr, len);
  return real_connect(fd, addr, len);
}

}  // extern "C"
#pragma GCC visibility pop
