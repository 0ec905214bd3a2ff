// The daemon's side of the application library: the socket programs under
// `vpmtun exec` register their binds on, and the instances they make.
//
// Theory of operation (the wire is vpm/app_wire.hpp). The library socket is
// a SOCK_SEQPACKET Unix socket anyone may connect to (mode 0666): who may
// register is decided per app from the peer's SO_PEERCRED uid ([[app]]
// users; default the daemon's user and root), and the socket answers
// nothing but Hello, Bind and Dial. Each library connection registers at most one
// socket of one process: its Bind carries the socket itself (SCM_RIGHTS),
// so the daemon reads the real port, family and protocol from the kernel
// rather than trusting the program, and closes its copy at once. The
// registration (an instance) lasts until that connection closes, which is
// when the last process holding the registered socket is gone.
//
// Each app has a peer table (vpm::appwire::PeerTable) in a sealed memfd
// that its instances map read-only. open() picks the app's next instance
// that takes the client (protocol, p1, address family, the address it
// bound), connects a loopback socket to the instance's real port and
// writes the client into the slot of the socket's own port; closing()
// clears the slot. An instance whose port refuses stays registered (it may
// not have called listen() yet) and the next one is tried; one that still
// refuses kSettleMs after it registered is closed and dropped (a process
// exec'd without the socket may hold its registration open).
//
// A Dial (cooperative mode) carries the program's socket too, so the client
// address:port negotiated for is the one the kernel gave it; CoopClient
// negotiates, and the answer ends the connection.
//
// Bounds: kMaxPeers library connections, of which at most
// kMaxUnregisteredPerUser per uid have not registered yet; one that has not
// registered within kHelloMs is closed; every malformed message closes its
// connection and is counted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "stack/stack.hpp"
#include "tun/log_budget.hpp"
#include "vpm/app_wire.hpp"
#include "vpm/rules.hpp"

namespace tun {

struct InstanceCounters {
  uint64_t registered = 0;         // Binds taken
  uint64_t refused = 0;            // Hellos and Binds refused (app, user, port)
  uint64_t bad_messages = 0;       // malformed, out of order, or without the socket
  uint64_t peers_dropped = 0;      // connections closed: too many, or silent past kHelloMs
  uint64_t instance_refusals = 0;  // relays an instance's port refused
};

// One registered socket, for `vpmtun apps` and the metrics.
struct InstanceInfo {
  std::string app;
  pid_t pid = 0;
  uid_t uid = 0;
  std::string command;
  vpm::Proto proto = vpm::Proto::tcp;
  vpm::Endpoint bound;   // what the program asked for (address, p1)
  vpm::Endpoint real;    // the loopback address and port it really has
  uint64_t relayed = 0;  // connections (TCP) or client sessions (UDP) relayed to it
  uint64_t open = 0;     // of those, open now
  uint64_t refusals = 0;
};

class CoopClient;

class InstanceRegistry : public stack::Instances {
 public:
  static constexpr size_t kMaxPeers = 4096;
  static constexpr size_t kMaxUnregisteredPerUser = 64;  // so no one user fills kMaxPeers
  static constexpr uint64_t kHelloMs = 10000;
  static constexpr uint64_t kSettleMs = 5000;  // a registered port may refuse this long

  // Listens at `path`. Throws std::runtime_error when it cannot.
  InstanceRegistry(const std::string& path, stack::IoLoop& io, const vpm::Ruleset& rules);
  ~InstanceRegistry() override;
  InstanceRegistry(const InstanceRegistry&) = delete;
  InstanceRegistry& operator=(const InstanceRegistry&) = delete;

  const std::string& path() const { return path_; }
  // Cooperative mode: who negotiates the Dials of client apps' programs.
  void dial_with(CoopClient* coop) { coop_ = coop; }

  int open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
           const vpm::IpAddr& vaddr, uint16_t p1) override;
  void refused(int fd) override;
  void closing(int fd) override;

  // Closes library connections that never registered, and registrations
  // whose socket is gone (call now and then).
  void expire(uint64_t now_ms);

  std::vector<InstanceInfo> instances() const;
  const InstanceCounters& counters() const { return counters_; }

 private:
  struct AppTable;
  struct Peer;
  struct Relay {
    Peer* peer;  // nullptr once the instance is gone
    vpm::Proto proto;
    bool ipv6;
    uint16_t local_port;
    vpm::IpAddr client;
    uint16_t cport;
    AppTable* table;
    bool opened = false;  // counted in the instance's open relays
  };

  void accept_peers();
  void serve(int fd);
  void drop(int fd);
  void hello(Peer& p, const vpm::appwire::Hello& h);
  void bind(Peer& p, const vpm::appwire::Bind& b, int sock);
  void dial(Peer& p, const vpm::appwire::Dial& d, int sock);
  bool send(Peer& p, const vpm::appwire::Message& m, int fd_to_pass = -1);
  AppTable* table_for(const std::string& app);
  bool allowed(const vpm::AppConfig& app, uid_t uid) const;
  const vpm::AppConfig* app_for(const Peer& p, const std::string& name,
                                vpm::appwire::Status& status, std::string& reason) const;
  // The app of that name that takes new instances (not draining), or nullptr.
  const vpm::AppConfig* live_app(const std::string& name) const;
  static std::vector<vpm::appwire::ListenPort> listens_of(const vpm::AppConfig* app);
  // Refusals are logged at most 10 a second (anyone may connect).
  LogBudget log_{"library socket", 10};

  std::string path_;
  stack::IoLoop& io_;
  const vpm::Ruleset& rules_;
  int fd_ = -1;
  std::map<int, std::unique_ptr<Peer>> peers_;
  std::map<std::string, std::unique_ptr<AppTable>> tables_;
  std::unordered_map<int, Relay> relays_;  // by the relay socket's fd
  std::map<std::string, uint64_t> turn_;   // per app: the next instance to try
  InstanceCounters counters_;
  uid_t daemon_uid_;
  CoopClient* coop_ = nullptr;
  uint64_t next_peer_ = 0;
};

}  // namespace tun
