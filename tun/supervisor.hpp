// A daemon of several workers: [tun] queues > 1.
//
// Theory of operation. The TUN is multi-queue (tun/device.hpp): the kernel
// spreads packets over its queues by a hash of each flow and sends a flow
// to the queue its replies are written on, so a flow stays with one queue.
// The supervisor forks one worker per queue. A worker is a whole Daemon
// (tun/daemon.hpp) on its queue: its own engine and embedded lwIP (one
// global instance per process), its own backend connections, and its share
// of the flow table and of each per-connection slice of hidden ports
// (vpm::Share); per-app p2s come from the configuration, the same in all.
//
// The supervisor has no data path. It serves the control socket and the
// metrics by asking every worker over its channel (a socketpair carrying
// frames: a 4-byte length, then text): stats and apps are the sum of the
// workers' vpm figures (tun/report.hpp), the table is their rows joined. It
// runs the hooks of [daemon] (tun/hooks.hpp), reloads every worker on
// SIGHUP or `vpmtun reload`, and on SIGTERM runs on_drain while everything
// serves, then signals the workers, which drain as one daemon does; after
// the last has exited, on_stop. A worker that dies unasked is logged and
// started again on its queue (at most once a second), with the last
// configuration taken; the queue keeps its packets meanwhile, because the
// supervisor holds every queue open. A worker whose supervisor dies gets
// SIGTERM (PR_SET_PDEATHSIG).
//
// Apps run by programs (serve = "exec"): the supervisor has the library
// socket and the registry of instances, and each worker relays to them
// with a mirror of the registrations (tun/instance_channel.hpp).
//
// Captures: the supervisor makes the files, every worker appends to them
// (tun/capture.hpp).
//
// Cooperative mode: a negotiation on p1 and the connection it is for, on
// p2, have the same client address but not the same ports, and each
// worker has its own negotiations. So when anything cooperates the kernel
// picks queues by the packet's addresses alone (TunDevice::
// steer_by_addresses): both reach the worker that negotiated. The client
// side's Dials come through the library socket, so they are the
// supervisor's (its own CoopClient).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tun/daemon.hpp"
#include "tun/event_loop.hpp"
#include "tun/instances.hpp"
#include "tun/report.hpp"

namespace tun {

// The channel's frames. Both false/std::nullopt when the peer is gone, or
// (read_frame) when no whole frame came within `timeout_ms`.
bool write_frame(int fd, std::string_view body);
std::optional<std::string> read_frame(int fd, int timeout_ms);

struct SupervisorCounters {
  uint64_t worker_restarts = 0;
  uint64_t reloads = 0, reloads_refused = 0;
};

class Supervisor : public EventLoop {
 public:
  // Keeps `device` (every queue) and `cfg`.
  Supervisor(const vpm::Config& cfg, TunDevice& device, const DaemonOptions& opt);
  ~Supervisor() override;

  void serve_control(const std::string& path);
  void serve_metrics(const vpm::Endpoint& listen);
  // Starts the workers and serves until they have all stopped. Returns the
  // exit code: 0, or 1 when the loop failed.
  int run();

  std::pair<bool, std::string> answer(const std::string& request);
  // The library socket's path, when an app runs programs; else empty.
  std::string library_socket() const { return instances_ ? instances_->path() : ""; }

 private:
  struct Worker {
    pid_t pid = -1;
    int channel = -1;
    int instances = -1;  // our end of its instance channel, when programs run apps
    uint64_t started_ms = 0;
    uint64_t restart_at_ms = 0;  // when it is to start again (0: not to)
  };
  void start(size_t q, uint64_t now_ms);
  [[noreturn]] void work(size_t q, int channel, int instances);
  void reap(uint64_t now_ms);
  void signal_workers(int sig);
  size_t running() const;
  // Worker q's answer to `request`: (ok, body); false with why when it did not answer.
  std::pair<bool, std::string> ask(size_t q, const std::string& request);
  // The instance channels (tun/instance_channel.hpp).
  void serve_instances(size_t q);
  void end_instances(size_t q);
  // Tells every worker; one that cannot be told is killed (and restarted).
  void tell_workers(const std::function<bool(int channel)>& tell);
  std::optional<Figures> summed(std::string& why);
  // Each app's flows summed over the workers, and whether it drains; or
  // std::nullopt with why.
  struct Busy {
    std::vector<size_t> flows;
    std::vector<bool> draining;
    std::string words() const;  // " N N ..." for "reload" and "settle"
  };
  std::optional<Busy> busy(std::string& why);
  std::pair<bool, std::string> reload_all();
  void settle();
  std::string metrics();

  vpm::Config cfg_;
  TunDevice& device_;
  DaemonOptions opt_;
  std::vector<Worker> workers_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<Hooks> hooks_;
  std::unique_ptr<InstanceRegistry> instances_;  // when an app runs programs
  std::unique_ptr<CoopClient> coop_client_;      // the Dials of their programs (remote apps)
  SupervisorCounters counters_;
  bool stopping_ = false;
  uint64_t settled_ms_ = 0;
  pid_t self_;
};

}  // namespace tun
