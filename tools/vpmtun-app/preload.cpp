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
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "tun/fd_passing.hpp"
#include "vpm/app_wire.hpp"

using namespace vpm::appwire;

namespace {

// ---- the real functions ----

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}
#define REAL(name) static const auto real_##name = real<decltype(&::name)>(#name)

// ---- configuration from `vpmtun exec` ----

struct Settings {
  bool active = false;  // run by vpmtun exec
  bool valid = false;   // VPMTUN_LISTEN parsed
  std::string app, socket_path;
  std::vector<ListenPort> listens;
};

const Settings& settings() {
  static const Settings s = [] {
    Settings out;
    const char* app = std::getenv("VPMTUN_APP");
    const char* sock = std::getenv("VPMTUN_SOCKET");
    const char* listen = std::getenv("VPMTUN_LISTEN");
    if (!app || !sock) return out;
    out.active = true;
    out.app = app;
    out.socket_path = sock;
    if (auto l = listen ? parse_listens(listen) : std::nullopt) {
      out.listens = *l;
      out.valid = true;
    }
    return out;
  }();
  return s;
}

void complain(const std::string& what) {
  char comm[64] = "?";
  if (FILE* f = std::fopen("/proc/self/comm", "re")) {
    if (std::fgets(comm, sizeof comm, f)) comm[std::strcspn(comm, "\n")] = 0;
    std::fclose(f);
  }
  std::string line =
      "vpmtun exec: " + std::string(comm) + " [" + std::to_string(::getpid()) + "]: " + what + "\n";
  (void)!::write(2, line.data(), line.size());
}

// ---- our descriptors: registrations, kept out of the program's way ----

constexpr int kMaxFd = 65536;
std::atomic<uint64_t> ours[kMaxFd / 64];

bool is_ours(int fd) {
  return fd >= 0 && fd < kMaxFd && (ours[fd / 64].load(std::memory_order_relaxed) >> (fd % 64)) & 1;
}
void mark(int fd, bool on) {
  if (fd < 0 || fd >= kMaxFd) return;
  uint64_t bit = uint64_t{1} << (fd % 64);
  if (on)
    ours[fd / 64].fetch_or(bit);
  else
    ours[fd / 64].fetch_and(~bit);
}

// Registration connections are bound to an abstract name with this prefix,
// so that a program exec'd with them recognises them as its own (adopt()).
constexpr char kRegistrationName[] = "vpmtun-registration/";

bool is_registration(int fd) {
  sockaddr_un a{};
  socklen_t len = sizeof a;
  constexpr size_t n = sizeof kRegistrationName - 1;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 &&
         a.sun_family == AF_UNIX && len > offsetof(sockaddr_un, sun_path) + n &&
         a.sun_path[0] == '\0' && std::memcmp(a.sun_path + 1, kRegistrationName, n) == 0;
}

// At start: the registrations this process inherited across exec.
__attribute__((constructor)) void adopt() {
  if (!std::getenv("VPMTUN_APP")) return;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return;
  int own = ::dirfd(dir);
  while (dirent* e = ::readdir(dir)) {
    int fd = std::atoi(e->d_name);
    if (fd > 2 && fd != own && is_registration(fd)) mark(fd, true);
  }
  ::closedir(dir);
}

// A high descriptor number for `fd`, away from the ones programs count on,
// inherited across exec.
int move_high(int fd) {
  int high = ::fcntl(fd, F_DUPFD, 512);
  if (high < 0) {
    ::fcntl(fd, F_SETFD, 0);
    return fd;
  }
  REAL(close);
  real_close(fd);
  return high;
}

// ---- the daemon ----

std::mutex lock;                     // registration and the table mapping
const uint8_t* table_map = nullptr;  // the app's peer table, read-only
std::atomic<bool> table_ready{false};
uint64_t last_table_try = 0;

PeerTable table() {
  if (!table_ready.load(std::memory_order_acquire)) return PeerTable({});
  return PeerTable({const_cast<uint8_t*>(table_map), PeerTable::kTableBytes});
}

void map_table(int memfd) {
  if (table_ready.load() || memfd < 0) return;
  void* m = ::mmap(nullptr, PeerTable::kTableBytes, PROT_READ, MAP_SHARED, memfd, 0);
  if (m == MAP_FAILED) return;
  table_map = static_cast<const uint8_t*>(m);
  table_ready.store(true, std::memory_order_release);
}

// Sends `m` (with `fd_to_pass`) and reads the answer (taking a passed
// descriptor into *fd_back). False with *why when the daemon did not answer.
bool exchange(int conn, const Message& m, int fd_to_pass, std::optional<Message>& answer,
              int* fd_back, std::string* why) {
  if (!tun::send_with_fd(conn, encode(m), fd_to_pass, 0)) {
    *why = std::string("the daemon did not take the message: ") + std::strerror(errno);
    return false;
  }
  uint8_t buf[kMaxMessage];
  std::vector<int> fds;
  bool cut = false;
  ssize_t n = tun::recv_with_fds(conn, buf, fds, 0, &cut);
  for (int got : fds) {
    if (fd_back && *fd_back < 0)
      *fd_back = got;
    else
      ::close(got);
  }
  if (n <= 0) {
    *why = n == 0 ? "the daemon closed the connection"
                  : std::string("no answer from the daemon: ") + std::strerror(errno);
    return false;
  }
  answer = decode({buf, static_cast<size_t>(n)}, why);
  return answer.has_value();
}

std::string command_line() {
  std::string cmd;
  if (FILE* f = std::fopen("/proc/self/cmdline", "re")) {
    char buf[kMaxCommand];
    size_t n = std::fread(buf, 1, sizeof buf, f);
    std::fclose(f);
    for (size_t i = 0; i < n; ++i) cmd += buf[i] ? buf[i] : ' ';
    while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
  }
  return cmd;
}

// A connection to the daemon that has said Hello; -1 with *why and *err.
int hello(std::string* why, int* err) {
  const Settings& s = settings();
  int conn = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (conn < 0) {
    *why = std::string("socket: ") + std::strerror(errno);
    *err = EADDRNOTAVAIL;
    return -1;
  }
  // A name that says what this connection is (adopt()); pid and a count
  // make it unique, and without it the registration works all the same.
  static std::atomic<unsigned> count{0};
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string name = kRegistrationName + std::to_string(::getpid()) + "/" +
                     std::to_string(count.fetch_add(1));
  std::memcpy(a.sun_path + 1, name.data(), name.size());
  ::bind(conn, reinterpret_cast<sockaddr*>(&a),
         static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size()));
  a = {};
  a.sun_family = AF_UNIX;
  if (s.socket_path.size() >= sizeof a.sun_path) {
    *why = "VPMTUN_SOCKET is longer than a socket path may be";
    *err = EADDRNOTAVAIL;
    ::close(conn);
    return -1;
  }
  std::memcpy(a.sun_path, s.socket_path.c_str(), s.socket_path.size() + 1);
  timeval tv{5, 0};
  ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REAL(connect);
  REAL(close);
  if (real_connect(conn, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    *why = "no vpmtun daemon at " + s.socket_path + " (" + std::strerror(errno) + ")";
    *err = EADDRNOTAVAIL;
    real_close(conn);
    return -1;
  }
  std::optional<Message> answer;
  int memfd = -1;
  if (!exchange(conn, Hello{s.app, command_line()}, -1, answer, &memfd, why)) {
    *err = EADDRNOTAVAIL;
    real_close(conn);
    return -1;
  }
  const auto* w = std::get_if<Welcome>(&*answer);
  if (!w || w->status != Status::ok) {
    *why = w ? w->reason : "the daemon answered out of turn";
    *err = w && w->status == Status::not_allowed ? EACCES : EADDRNOTAVAIL;
    if (memfd >= 0) ::close(memfd);
    real_close(conn);
    return -1;
  }
  map_table(memfd);
  if (memfd >= 0) ::close(memfd);
  return conn;
}

// The app's peer table, asking the daemon for it if this process has not
// (a child that inherited sockets). Retried at most once a second.
PeerTable table_or_ask() {
  if (table_ready.load(std::memory_order_acquire) || !settings().active) return table();
  std::lock_guard<std::mutex> g(lock);
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t sec = static_cast<uint64_t>(now.tv_sec);
  if (!table_ready.load() && sec != last_table_try) {
    last_table_try = sec;
    std::string why;
    int err = 0;
    int conn = hello(&why, &err);
    if (conn >= 0) ::close(conn);
  }
  return table();
}

// ---- socket addresses ----

struct Inet {
  bool ok = false;
  bool ipv6 = false;  // the sockaddr's family
  vpm::IpAddr addr;
  uint16_t port = 0;
};

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
  if (!d.ok || is_loopback(d.addr) || !table_ready.load(std::memory_order_acquire)) return false;
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

// ---- bind ----

int take_bind(int fd, vpm::Proto proto, const Inet& asked, bool family6) {
  const Settings& s = settings();
  auto fail = [&](int err, const std::string& why) {
    complain("bind " + vpm::Endpoint{asked.addr, asked.port}.str() + "/" + vpm::proto_name(proto) +
             " refused: " + why);
    errno = err;
    return -1;
  };
  if (!s.valid) return fail(EADDRNOTAVAIL, "VPMTUN_LISTEN is missing or malformed");
  std::lock_guard<std::mutex> g(lock);
  std::string why;
  int err = 0;
  int conn = hello(&why, &err);
  if (conn < 0) return fail(err, why);
  REAL(bind);
  REAL(close);
  // Whether the program's socket takes IPv4 clients, before binding ::1
  // makes the kernel say it does not.
  int v6only = 0;
  socklen_t olen = sizeof v6only;
  if (family6) ::getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &olen);
  sockaddr_storage ss{};
  socklen_t len;
  vpm::IpAddr lo = family6 ? *vpm::IpAddr::parse("::1") : *vpm::IpAddr::parse("127.0.0.1");
  len = sizeof ss;
  store(family6, lo, 0, reinterpret_cast<sockaddr*>(&ss), &len);
  if (real_bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
    int e = errno;
    real_close(conn);
    return fail(e, std::string("binding a loopback port: ") + std::strerror(e));
  }
  sockaddr_storage got{};
  socklen_t glen = sizeof got;
  REAL(getsockname);
  real_getsockname(fd, reinterpret_cast<sockaddr*>(&got), &glen);
  Inet real_port = parse(reinterpret_cast<sockaddr*>(&got), glen);
  std::optional<Message> answer;
  Bind b{proto, family6, v6only != 0, asked.addr, asked.port, real_port.port};
  if (!exchange(conn, b, fd, answer, nullptr, &why)) {
    real_close(conn);
    return fail(EADDRNOTAVAIL, why);
  }
  const auto* bound = std::get_if<Bound>(&*answer);
  if (!bound || bound->status != Status::ok) {
    real_close(conn);
    return fail(EADDRNOTAVAIL, bound ? bound->reason : "the daemon answered out of turn");
  }
  // Not close-on-exec, whatever the socket is now: a program may hand the
  // socket to a program it execs (and clear its flag only then).
  conn = move_high(conn);
  mark(conn, true);
  return 0;
}

// Moves a registration descriptor out of the way of `fd` (dup2/dup3 onto it).
void clear_way(int fd) {
  if (!is_ours(fd)) return;
  int flags = ::fcntl(fd, F_GETFD);
  int moved = ::fcntl(fd, (flags & FD_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, fd + 1);
  if (moved < 0) return;  // the dup then closes it: that registration ends
  mark(moved, true);
  mark(fd, false);
}

}  // namespace

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
