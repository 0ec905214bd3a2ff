// libvpmtun-app.so's side of the library socket: the settings `vpmtun
// exec` gave, the Hello and Bind exchanges, the peer table's mapping, and
// the registration descriptors kept out of the program's way.
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
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

#include "library.hpp"
#include "tun/fd_passing.hpp"

using namespace vpm::appwire;

namespace vpmtun_app {

// ---- configuration from `vpmtun exec` ----

const Settings& settings() {
  static const Settings s = [] {
    Settings out;
    const char* app = std::getenv("VPMTUN_APP");
    const char* sock = std::getenv("VPMTUN_SOCKET");
    const char* listen = std::getenv("VPMTUN_LISTEN");
    const char* remote = std::getenv("VPMTUN_REMOTE");
    if (!app || !sock) return out;
    out.active = true;
    out.app = app;
    out.socket_path = sock;
    if (auto l = listen ? parse_listens(listen) : std::nullopt) {
      out.listens = *l;
      out.valid = true;
    }
    if (auto r = remote ? parse_listens(remote) : std::nullopt) out.remotes = *r;
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
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 && a.sun_family == AF_UNIX &&
         len > offsetof(sockaddr_un, sun_path) + n && a.sun_path[0] == '\0' &&
         std::memcmp(a.sun_path + 1, kRegistrationName, n) == 0;
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

int open_daemon(bool registration, std::string* why, int* err) {
  const Settings& s = settings();
  int conn = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (conn < 0) {
    *why = std::string("socket: ") + std::strerror(errno);
    *err = EADDRNOTAVAIL;
    return -1;
  }
  sockaddr_un a{};
  if (registration) {
    // A name that says what this connection is (adopt()); pid and a count
    // make it unique, and without it the registration works all the same.
    static std::atomic<unsigned> count{0};
    a.sun_family = AF_UNIX;
    std::string name =
        kRegistrationName + std::to_string(::getpid()) + "/" + std::to_string(count.fetch_add(1));
    std::memcpy(a.sun_path + 1, name.data(), name.size());
    ::bind(conn, reinterpret_cast<sockaddr*>(&a),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size()));
  }
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
  return conn;
}

int hello(std::string* why, int* err) {
  int conn = open_daemon(true, why, err);
  if (conn < 0) return -1;
  REAL(close);
  std::optional<Message> answer;
  int memfd = -1;
  if (!exchange(conn, Hello{settings().app, command_line()}, -1, answer, &memfd, why)) {
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

}  // namespace vpmtun_app
