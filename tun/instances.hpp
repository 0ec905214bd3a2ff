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
// clears the slot (tun/relays.hpp). An instance whose port refuses stays
// registered (it may not have called listen() yet) and the next one is
// tried; one that still refuses Relays::kSettleMs after it registered is
// closed and dropped (a process exec'd without the socket may hold its
// registration open). With workers, this registry is the supervisor's and
// the workers relay (tun/instance_channel.hpp): watch() tells of every
// instance added and gone, and dead() of one a worker found dead.
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
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "stack/stack.hpp"
#include "tun/log_budget.hpp"
#include "tun/relays.hpp"
#include "vpm/app_wire.hpp"
#include "vpm/config.hpp"

namespace tun {

struct InstanceCounters {
  uint64_t registered = 0;     // Binds taken
  uint64_t refused = 0;        // Hellos and Binds refused (app, user, port)
  uint64_t bad_messages = 0;   // malformed, out of order, or without the socket
  uint64_t peers_dropped = 0;  // connections closed: too many, or silent past kHelloMs
};

// One registered socket, for `vpmtun apps` and the metrics.
struct InstanceInfo {
  uint64_t id = 0;
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

  // Adds what another process counted for the same instance (workers' relays).
  void add_counts(const InstanceInfo& o) {
    relayed += o.relayed;
    open += o.open;
    refusals += o.refusals;
  }
};

// The instances of `relays`, with what relays know (no pid, uid or command).
std::vector<InstanceInfo> infos_of(const Relays& relays);

class CoopClient;

class InstanceRegistry : public stack::Instances {
 public:
  static constexpr size_t kMaxPeers = 4096;
  static constexpr size_t kMaxUnregisteredPerUser = 64;  // so no one user fills kMaxPeers
  static constexpr uint64_t kHelloMs = 10000;

  // Listens at `path`; `config` gives the rules in force. Throws
  // std::runtime_error when it cannot.
  InstanceRegistry(const std::string& path, stack::IoLoop& io,
                   std::function<const vpm::Config&()> config);
  ~InstanceRegistry() override;
  InstanceRegistry(const InstanceRegistry&) = delete;
  InstanceRegistry& operator=(const InstanceRegistry&) = delete;

  const std::string& path() const { return path_; }
  // Cooperative mode: who negotiates the Dials of client apps' programs.
  void dial_with(CoopClient* coop) { coop_ = coop; }

  // stack::Instances, for the stack of this process (tun/relays.hpp).
  int open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
           const vpm::IpAddr& vaddr, uint16_t p1) override;
  void refused(int fd) override;
  void closing(int fd) override;

  // Workers: `changed` is called with each instance registered and with
  // the id of each one gone (nullptr).
  using Watcher = std::function<void(uint64_t id, const Instance* added)>;
  void watch(Watcher changed) { watcher_ = std::move(changed); }
  // A worker found instance `id` dead: it is dropped at the next expire().
  void dead(uint64_t id);
  const Relays& relays() const { return relays_; }
  // Each app's peer table, by app name.
  std::map<std::string, vpm::appwire::PeerTable*> tables() const;
  // Workers map the peer tables writable before they are sealed (an
  // instance gets one only sealed): prepare() makes the tables of `cfg`'s
  // apps that have none yet and returns them (app, memfd), seal_all() seals.
  std::vector<std::pair<std::string, int>> prepare(const vpm::Config& cfg);
  void seal_all();

  // Closes library connections that never registered, and registrations
  // whose socket is gone (call now and then).
  void expire(uint64_t now_ms);

  std::vector<InstanceInfo> instances() const;
  const InstanceCounters& counters() const { return counters_; }

 private:
  struct AppTable;
  struct Peer;

  void accept_peers();
  void serve(int fd);
  void drop(int fd);
  void hello(Peer& p, const vpm::appwire::Hello& h);
  void bind(Peer& p, const vpm::appwire::Bind& b, int sock);
  void dial(Peer& p, const vpm::appwire::Dial& d, int sock);
  bool send(Peer& p, const vpm::appwire::Message& m, int fd_to_pass = -1);
  AppTable* table_for(const std::string& app);
  bool seal(AppTable& t);
  bool allowed(const vpm::AppConfig& app, uid_t uid) const;
  const vpm::AppConfig* app_for(const Peer& p, const std::string& name,
                                vpm::appwire::Status& status, std::string& reason) const;
  // The app of that name that takes new instances (not draining), or nullptr.
  const vpm::AppConfig* live_app(const std::string& name) const;
  static std::vector<vpm::appwire::ListenPort> listens_of(const vpm::AppConfig* app);
  // Refusals are logged at most 10 a second (anyone may connect).
  LogBudget log_{"library socket", 10};

  const vpm::Config& config() const { return config_(); }

  std::string path_;
  stack::IoLoop& io_;
  std::function<const vpm::Config&()> config_;
  int fd_ = -1;
  std::map<int, std::unique_ptr<Peer>> peers_;
  std::map<std::string, std::unique_ptr<AppTable>> tables_;
  Relays relays_;  // by the peer's id
  Watcher watcher_;
  InstanceCounters counters_;
  uid_t daemon_uid_;
  CoopClient* coop_ = nullptr;
  uint64_t next_peer_ = 0;
};

}  // namespace tun
