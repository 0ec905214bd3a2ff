// How the workers (tun/supervisor.hpp) relay to the instances of exec apps.
//
// Theory of operation. With workers, the supervisor alone has the library
// socket and the registry (tun/instances.hpp): a program registers once,
// for every worker, and its registration ends when it does, as with one
// process. Each worker relays its own connections (tun/relays.hpp): it
// connects to the instance and writes the client into the app's peer
// table itself, in a mapping it shares with the supervisor and the
// instances, so a connection costs no round trip to the supervisor. What
// the worker needs is a mirror of the registrations, kept by a
// SOCK_SEQPACKET socketpair, the instance channel:
//
//   supervisor                                  worker
//   "t APP" and the peer table (a memfd) -->   mapped writable (before the
//                                              supervisor seals it)
//   "+ ID APP PROTO IPV6 V6ONLY ADDR P1 REAL REGISTERED_MS" --> an instance
//   "- ID" ---------------------------------->  gone
//   <-- "d ID": the worker found its port refusing past Relays::kSettleMs
//
// A worker starts with what its supervisor had when it forked (the
// registrations and the tables' mappings, InstanceFeed). The supervisor
// tells every worker of a registration before it answers the program, so
// each has it by the time the program listens; a worker that cannot be told
// within a second is killed and started again. Tables of apps a reload adds
// are sent before the workers reload (which reads them first) and sealed after.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "stack/stack.hpp"
#include "tun/log_budget.hpp"
#include "tun/relays.hpp"
#include "vpm/config.hpp"

namespace tun {

class InstanceRegistry;

// What a worker starts with.
struct InstanceFeed {
  int channel = -1;  // the worker's end, or -1 when no app runs programs
  std::map<std::string, vpm::appwire::PeerTable*> tables;  // mappings inherited
  std::map<uint64_t, Instance> instances;
};

class RemoteInstances : public stack::Instances {
 public:
  // Takes feed.channel; `config` gives the worker's rules (an app's name from its index).
  RemoteInstances(const InstanceFeed& feed, stack::IoLoop& io,
                  std::function<const vpm::Config&()> config);
  ~RemoteInstances() override;
  RemoteInstances(const RemoteInstances&) = delete;
  RemoteInstances& operator=(const RemoteInstances&) = delete;

  int open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
           const vpm::IpAddr& vaddr, uint16_t p1) override;
  void refused(int fd) override;
  void closing(int fd) override;

  // Takes what the supervisor sent (also when the channel is readable).
  void hear();
  const Relays& relays() const { return relays_; }

 private:
  struct Mapping;
  void map_table(const std::string& app, int memfd);
  int channel_;
  bool channel_open_ = true;
  stack::IoLoop& io_;
  std::function<const vpm::Config&()> config_;
  std::map<std::string, vpm::appwire::PeerTable*> tables_;
  std::vector<std::unique_ptr<Mapping>> mapped_;
  Relays relays_;
  LogBudget log_{"instance channel", 10};
};

// The supervisor's side. False when the message could not be sent within a
// second (the worker is stuck).
bool tell_table(int channel, const std::string& app, int memfd);
bool tell_instance(int channel, uint64_t id, const Instance* added);
// Takes what worker `owner` sent. False when its end is closed.
bool serve_instance_channel(int channel, InstanceRegistry& registry, int owner);

}  // namespace tun
