// Internal to libvpmtun-app.so: what its two files share. preload.cpp has
// the theory of operation and the calls the library interposes;
// registration.cpp talks to the daemon and keeps its descriptors.
#pragma once

#include <dlfcn.h>
#include <sys/socket.h>

#include <optional>
#include <string>
#include <vector>

#include "vpm/app_wire.hpp"

namespace vpmtun_app {

// The next definition of a libc function: the real one behind ours.
template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}
#define REAL(name) static const auto real_##name = vpmtun_app::real<decltype(&::name)>(#name)

// ---- registration.cpp ----

struct Settings {
  bool active = false;  // run by vpmtun exec
  bool valid = false;   // VPMTUN_LISTEN parsed
  std::string app, socket_path;
  std::vector<vpm::appwire::ListenPort> listens;
  std::vector<vpm::appwire::ListenPort> remotes;  // VPMTUN_REMOTE: cooperative servers
};
const Settings& settings();
// A line on the program's stderr, naming the program.
void complain(const std::string& what);

// Registration descriptors of this process (those below kMaxFd).
constexpr int kMaxFd = 65536;
bool is_ours(int fd);
// Moves a registration descriptor out of the way of `fd` (dup2/dup3 onto it).
void clear_way(int fd);

// The app's peer table: empty until a Hello has mapped it.
vpm::appwire::PeerTable table();
// The same, asking the daemon for it if this process has not (a child
// that inherited sockets). Retried at most once a second.
vpm::appwire::PeerTable table_or_ask();

// A connection to the daemon's library socket (one that may register:
// named for adopt()); -1 with *why and *err (the errno for the program).
int open_daemon(bool registration, std::string* why, int* err);
// The same, having said Hello (and mapped the peer table).
int hello(std::string* why, int* err);
// Sends `m` (with `fd_to_pass`) on `conn` and reads the answer (a passed
// descriptor into *fd_back). False with *why when the daemon did not answer.
bool exchange(int conn, const vpm::appwire::Message& m, int fd_to_pass,
              std::optional<vpm::appwire::Message>& answer, int* fd_back, std::string* why);

// ---- preload.cpp: socket addresses ----

struct Inet {
  bool ok = false;
  bool ipv6 = false;  // the sockaddr's family
  vpm::IpAddr addr;
  uint16_t port = 0;
};

Inet parse(const sockaddr* sa, socklen_t len);
// Writes `addr`:`port` in the family of the socket (`ipv6`) into the
// caller's buffer, as the kernel would: truncated to *len, *len set to the
// full size. False when the address does not fit the family.
bool store(bool ipv6, const vpm::IpAddr& addr, uint16_t port, sockaddr* out, socklen_t* len);

// The socket's protocol; *ok false for anything but TCP and UDP.
vpm::Proto proto_of_socket(int fd, bool* ok);

// ---- registration.cpp ----

// bind() of a port the app listens on: an anonymous loopback port instead,
// registered with the daemon; -1 with errno (and a line on stderr) if not.
int take_bind(int fd, vpm::Proto proto, const Inet& asked, bool family6);

// ---- dial.cpp: cooperative mode ----

// connect() of a TCP socket to one of the app's remotes: the daemon
// negotiates, then the socket connects to the p2 it got; -1 with errno
// (ECONNREFUSED for a refusal, and a line on stderr) if not.
int dial(int fd, const Inet& server, const sockaddr* addr, socklen_t len);
// A peer the kernel returned: a remote's p2 this process dialled becomes its p1.
void translate_dialed(sockaddr* addr, socklen_t* len, socklen_t given);

}  // namespace vpmtun_app
