// A process's relays to the registered instances of exec apps: which
// instance takes a new client, the loopback socket connected to it, and
// the client announced in the app's peer table (vpm::appwire::PeerTable)
// for the instance's library to read.
//
// One process alone has them in its registry (tun/instances.hpp); with
// workers, each worker has its own Relays, the registrations mirrored from
// its supervisor's registry (tun/instance_channel.hpp), and writes the
// shared peer tables itself.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>

#include "vpm/app_wire.hpp"

namespace tun {

uint64_t monotonic_ms();
// The port of an AF_INET or AF_INET6 socket address.
uint16_t port_of(const sockaddr_storage& ss);

// A registered socket, as relays need it.
struct Instance {
  std::string app;
  vpm::appwire::Bind bind;  // what the program asked for, and its real loopback port
  uint64_t registered_ms = 0;
  vpm::appwire::PeerTable* table = nullptr;  // its app's
  bool dead = false;  // its port refused long after it registered: no more relays
  uint64_t relayed = 0, open = 0, refusals = 0;
};

class Relays {
 public:
  static constexpr uint64_t kSettleMs = 5000;  // a registered port may refuse this long

  void add(uint64_t id, Instance i) { instances_[id] = std::move(i); }
  // Its relays stay open and are closed as usual.
  void remove(uint64_t id);
  const std::map<uint64_t, Instance>& instances() const { return instances_; }

  // A non-blocking socket connecting to the next instance of `app` that
  // takes this client on (vaddr, p1), the client announced; -1 when none does.
  int open(const std::string& app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
           const vpm::IpAddr& vaddr, uint16_t p1);
  // The instance behind `fd` refused it. Returns the id of an instance
  // that this made dead (it refused past kSettleMs), else 0.
  uint64_t refused(int fd);
  void closing(int fd);

  uint64_t refusals() const { return refusals_; }

 private:
  struct Relay {
    uint64_t instance;  // 0 once the instance is gone
    vpm::Proto proto;
    bool ipv6;
    uint16_t local_port;
    vpm::IpAddr client;
    uint16_t cport;
    vpm::appwire::PeerTable* table;
  };
  std::map<uint64_t, Instance> instances_;  // by id
  std::unordered_map<int, Relay> relays_;   // by socket
  std::map<std::string, uint64_t> turn_;    // per app: the next instance to try
  uint64_t refusals_ = 0;
};

}  // namespace tun
