// The control socket, server and client.
#include "tun/control.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tun {

namespace {

constexpr size_t kMaxRequest = 4096;
constexpr size_t kMaxClients = 32;

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path)
    throw std::runtime_error("control socket path '" + path + "' must be 1-" +
                             std::to_string(sizeof a.sun_path - 1) + " characters");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

}  // namespace

std::vector<std::string> request_words(const std::string& request) {
  std::vector<std::string> words;
  for (size_t at = 0; at < request.size();) {
    size_t end = std::min(request.find(' ', at), request.size());
    if (end > at) words.push_back(request.substr(at, end - at));
    at = end + 1;
  }
  return words;
}

// A connected client socket, or -1 with errno set.
int connect_to(const std::string& path, int type) {
  sockaddr_un a = unix_address(path);
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  int err = errno;
  ::close(fd);
  errno = err;
  return -1;
}

namespace {

std::runtime_error failure(const std::string& what) {
  return std::runtime_error(what + ": " + std::strerror(errno));
}

}  // namespace

int listen_unix(const std::string& path, int type, mode_t mode, const std::string& what,
                const std::string& key) {
  sockaddr_un a = unix_address(path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw std::runtime_error(what + " " + path +
                               " exists and is not a socket; remove it or set " + key);
    int probe = connect_to(path, type);
    if (probe >= 0) {
      ::close(probe);
      throw std::runtime_error(what + " " + path +
                               " is in use by another running vpmtun; stop it or set " + key +
                               " to another path");
    }
    ::unlink(path.c_str());  // stale: its daemon is gone
  }
  int fd = ::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw failure(what);
  mode_t old = ::umask(static_cast<mode_t>(~mode & 0777));
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::umask(old);
  if (rc < 0 || ::listen(fd, 64) < 0) {
    auto e = failure(what + " " + path);
    ::close(fd);
    throw e;
  }
  return fd;
}

ControlServer::ControlServer(const std::string& path, stack::IoLoop& io, Handler handler)
    : path_(path),
      io_(io),
      handler_(std::move(handler)),
      fd_(listen_unix(path, SOCK_STREAM, 0600, "control socket", "[vpm] control_socket")) {
  io_.watch(fd_, EPOLLIN, [this](uint32_t) { accept_clients(); });
}

ControlServer::~ControlServer() {
  while (!clients_.empty()) drop(clients_.begin()->first);
  io_.unwatch(fd_);
  ::close(fd_);
  ::unlink(path_.c_str());
}

void ControlServer::accept_clients() {
  for (;;) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (clients_.size() >= kMaxClients) {
      ::close(fd);
      continue;
    }
    clients_[fd];
    io_.watch(fd, EPOLLIN, [this, fd](uint32_t ev) { serve(fd, ev); });
  }
}

void ControlServer::serve(int fd, uint32_t events) {
  Client& c = clients_[fd];
  if (c.out.empty()) {  // still reading the request
    char buf[1024];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (n < 0 && errno == EAGAIN) return;
      drop(fd);  // gone before asking
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t end = c.in.find('\n');
    if (end == std::string::npos && c.in.size() < kMaxRequest) return;
    auto [ok, body] = end == std::string::npos
                          ? std::pair<bool, std::string>{false, "request line too long\n"}
                          : handler_(c.in.substr(0, end));
    c.out = (ok ? "ok\n" : "error\n") + body;
  } else if (!(events & EPOLLOUT)) {
    return;
  }
  while (c.sent < c.out.size()) {
    ssize_t n = ::send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      io_.watch(fd, EPOLLOUT, [this, fd](uint32_t ev) { serve(fd, ev); });
      return;
    }
    if (n <= 0) break;  // the client left
    c.sent += static_cast<size_t>(n);
  }
  drop(fd);
}

void ControlServer::drop(int fd) {
  io_.unwatch(fd);
  ::close(fd);
  clients_.erase(fd);
}

std::pair<bool, std::string> ask_daemon(const std::string& path, const std::string& request) {
  int fd = connect_to(path, SOCK_STREAM);
  if (fd < 0) {
    int err = errno;
    std::string why = err == ENOENT || err == ECONNREFUSED
                          ? "no vpmtun is running with this control socket"
                      : err == EACCES || err == EPERM
                          ? "permission denied (the socket is for the daemon's user and root)"
                          : std::strerror(err);
    throw std::runtime_error(path + ": " + why);
  }
  std::string line = request + "\n";
  bool sent =
      ::send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size());
  std::string answer;
  char buf[65536];
  for (ssize_t n; sent && (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t nl = answer.find('\n');
  if (nl == std::string::npos)
    throw std::runtime_error(path + ": the daemon closed the connection without answering");
  return {answer.substr(0, nl) == "ok", answer.substr(nl + 1)};
}

}  // namespace tun
