// The daemon: one event loop joining a packet device, the engine and the stack.
//
// Theory of operation. epoll waits on the device, a timerfd (every 50 ms:
// lwIP timers, flow expiry) and a signalfd. SIGTERM/SIGINT drain: no new
// connections, open ones get up to DaemonOptions::drain_ms to finish, then
// the rest are reset (a second signal stops at once); the hooks of
// tun/hooks.hpp run when it serves, before the listeners close (on_drain)
// and after the loop (on_stop). SIGHUP, like `vpmtun reload`, re-reads the
// configuration file and takes its rules (vpm/reload.hpp). Each packet read from the
// device goes through Engine::to_stack; translated or passed, it enters the stack; refused, the
// client gets a RST or port unreachable built by vpm::build_refusal. Each packet the stack sends
// goes through Engine::to_tun and out of the device. Optional pcap captures
// (tun/capture.hpp) record both views: --capture-tun what crosses the
// device, --capture-stack what crosses the stack's netifs.
// The same loop serves the control socket (tun/control.hpp), the library
// socket of `vpmtun exec` when an app is run by programs
// (tun/instances.hpp), cooperative mode's negotiation both ways
// (tun/coop.hpp), and hands the
// metrics server (tun/metrics.hpp) its snapshots, so no lock guards the data
// path; refusals and drops are logged at info, at most 10 lines a second.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "stack/stack.hpp"
#include "tun/device.hpp"
#include "tun/event_loop.hpp"
#include "tun/instance_channel.hpp"
#include "vpm/ack_merge.hpp"
#include "vpm/engine.hpp"

namespace tun {

class Capture;
class ControlServer;
class CoopClient;
class CoopServer;
class Hooks;
class InstanceRegistry;
class MetricsServer;

struct DaemonOptions {
  vpm::Share share;               // a worker's part (tun/supervisor.hpp); it runs no hooks
  std::string capture_tun;        // pcap of the TUN side, or empty
  std::string capture_stack;      // pcap of the stack side, or empty
  int capture_fds[2] = {-1, -1};  // a worker's: the files its supervisor made (tun, stack)
  uint64_t drain_ms = 5000;       // how long SIGTERM waits for open connections
  std::vector<uint8_t> coop_key;  // cooperative mode's shared secret (tun::read_coop_key)
  // A worker's mirror of its supervisor's exec-app instances
  // (tun/instance_channel.hpp); the daemon takes the channel.
  InstanceFeed instances;
};

struct DaemonCounters {
  uint64_t device_write_errors = 0;
  uint64_t refusals_sent = 0;
  uint64_t reloads = 0;          // configuration files taken (vpmtun reload, SIGHUP)
  uint64_t reloads_refused = 0;  // and refused: errors, or changes that need a restart
};

class Daemon : public EventLoop {
 public:
  // Throws std::runtime_error for what it cannot set up (captures, stack).
  Daemon(const vpm::Config& cfg, PacketDevice& device, const DaemonOptions& opt);
  ~Daemon();

  // Reads and handles every packet waiting on the device.
  void drain_device(uint64_t now_ms);
  // Timers: lwIP's and flow expiry.
  void tick(uint64_t now_ms);
  // The event loop, until SIGTERM or SIGINT. Returns the exit code.
  int run();

  // Answers `vpmtun stats/table/apps` on a Unix socket at `path` (see
  // tun/control.hpp). Throws std::runtime_error if it cannot.
  void serve_control(const std::string& path);
  // Answers the supervisor of workers on `channel` (tun/supervisor.hpp):
  // the control requests, "figures", "render apps|metrics" of summed
  // figures, "busy" (per app: flows, and "d" when draining), and "reload"
  // and "settle" (drop drained apps) with every worker's busy counts
  // summed. Its end stops the daemon.
  void serve_supervisor(int channel);
  // Serves the Prometheus exposition at http://listen/metrics. Throws
  // std::runtime_error if it cannot listen.
  void serve_metrics(const vpm::Endpoint& listen);
  // One control request ("stats [json]", "table [json] [app=NAME]
  // [client=PREFIX]", "apps [json]", "reload"): (ok, answer or what was wrong).
  std::pair<bool, std::string> answer(const std::string& request);

  // Takes the rules of `next` for new flows; flows already held keep their
  // app, p2 and endpoint, and removed apps drain (vpm/reload.hpp). Nothing
  // changes when `next` changes what needs a restart. Returns (ok, what
  // changed or what was wrong, one line each).
  // `busy`: each app's flows and connections daemon-wide, when this is one
  // worker of several (else its own).
  std::pair<bool, std::string> reload(const vpm::Config& next,
                                      const std::vector<size_t>* busy = nullptr);
  // The same with the configuration file the daemon was started with, read again.
  std::pair<bool, std::string> reload_file(const std::vector<size_t>* busy = nullptr);

  uint64_t started_ms() const { return started_ms_; }

  const vpm::Engine& engine() const { return engine_; }
  const stack::Stack& stack() const { return *stack_; }
  const DaemonCounters& counters() const { return counters_; }
  // The stack's pure ACKs that a later one of the same batch made redundant (vpm::AckMerger).
  uint64_t acks_merged() const { return acks_.merged(); }
  const PacketDevice& device() const { return device_; }
  // The library socket and its instances: set when an app runs programs,
  // unless this is a worker (its supervisor has them).
  const InstanceRegistry* instances() const { return instances_.get(); }
  // A worker's relays to them: set when its supervisor has the registry.
  const RemoteInstances* remote_instances() const { return remote_instances_.get(); }
  // Cooperative mode: set when something cooperates ([cooperative] key_file).
  const CoopServer* coop_server() const { return coop_server_.get(); }
  const CoopClient* coop_client() const { return coop_client_.get(); }
  // [daemon] on_ready, on_drain, on_stop (tun/hooks.hpp).
  const Hooks& hooks() const { return *hooks_; }

 private:
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<InstanceRegistry> instances_;
  std::unique_ptr<RemoteInstances> remote_instances_;
  std::unique_ptr<CoopServer> coop_server_;
  std::unique_ptr<CoopClient> coop_client_;
  std::unique_ptr<Hooks> hooks_;
  void from_device(std::span<uint8_t> packet, bool verified, uint64_t now_ms);
  void from_stack(std::span<uint8_t> packet);
  void release_held(uint64_t now_ms);
  // To the device, after the ACKs held (acks_).
  void send(std::span<uint8_t> packet, uint16_t mss = 0);
  void write_out(std::span<uint8_t> packet, uint16_t mss);
  void flush_acks();
  void log_verdict(const char* what, std::span<uint8_t> packet, vpm::Drop reason, uint64_t now_ms);
  void end_log_second(uint64_t now_ms);
  std::pair<bool, std::string> read_and_reload(const std::vector<size_t>* busy);
  std::vector<size_t> busy_apps() const;
  void drop_drained_apps(const std::vector<size_t>& busy);

  vpm::Engine engine_;
  PacketDevice& device_;
  DaemonOptions opt_;
  std::unique_ptr<Capture> capture_tun_, capture_stack_;
  std::unique_ptr<stack::Stack> stack_;
  std::vector<uint8_t> buffer_;
  std::vector<uint8_t> refusal_;
  bool batching_ = false;  // in drain_device: the stack's pure ACKs are merged (acks_)
  vpm::AckMerger acks_;
  uint64_t now_ms_ = 0;
  DaemonCounters counters_;
  uint64_t started_ms_;
  uint64_t log_second_ms_ = 0, log_lines_ = 0, log_suppressed_ = 0;
  std::array<uint64_t, 2> logged_evictions_{};  // engine evictions (table full, no port) logged
  vpm::Config file_config_;  // the file's last good rules (without the draining apps)
  bool stopping_ = false;    // draining for SIGTERM: no reload
  uint64_t drained_check_ms_ = 0;
};

uint64_t monotonic_ms();
// Each line of a reload's outcome, at info when it worked, else at error.
void log_reload(bool ok, const std::string& said);

}  // namespace tun
