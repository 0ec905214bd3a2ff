// The control socket: how `vpmtun stats`, `table` and `apps` reach a
// running daemon.
//
// Protocol: a Unix stream socket; the client sends one request line
// ("VERB [ARG...]\n", at most 4 KiB) and reads the answer to EOF: a status
// line "ok" or "error", then the body (the report, or what was wrong).
// The socket file is created mode 0600, so only its owner (the daemon's
// user) and root can connect. A live socket at the path means another
// daemon: an error; a stale file (nobody listening) is replaced.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "stack/stack.hpp"

namespace tun {

class ControlServer {
 public:
  // Answers a request line: (ok, body).
  using Handler = std::function<std::pair<bool, std::string>(const std::string& request)>;

  // Throws std::runtime_error naming the path and what to do.
  ControlServer(const std::string& path, stack::IoLoop& io, Handler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return path_; }

 private:
  struct Client {
    std::string in, out;
    size_t sent = 0;
  };
  void accept_clients();
  void serve(int fd, uint32_t events);
  void drop(int fd);

  std::string path_;
  stack::IoLoop& io_;
  Handler handler_;
  int fd_ = -1;
  std::map<int, Client> clients_;
};

// A Unix socket listening at `path` (a stale file is replaced; a live one
// is another daemon's), created with permissions `mode`. Throws
// std::runtime_error naming `what`, the path, and the config `key` to change.
int listen_unix(const std::string& path, int type, mode_t mode, const std::string& what,
                const std::string& key);
// The words of a request line, split at spaces.
std::vector<std::string> request_words(const std::string& request);
// A connected client socket of `type`, or -1 with errno set.
int connect_to(const std::string& path, int type);

// The client side, for the CLI verbs: sends `request`, returns (ok, body).
// Throws std::runtime_error when no daemon answers (naming the path and why).
std::pair<bool, std::string> ask_daemon(const std::string& path, const std::string& request);

}  // namespace tun
