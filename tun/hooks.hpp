// The daemon's hooks ([daemon] on_ready, on_drain, on_stop): how a node tells
// the routing layer what it is doing, so that it is announced once it serves
// and withdrawn before it drains (README "Running several nodes").
//
// Each hook is a command line run as `/bin/sh -c COMMAND` in a process group
// of its own, stdin /dev/null, no signal blocked; what it writes to stdout
// and stderr is logged line by line ("on_drain: ..."; at most 100 lines a
// run, so JSON logs stay JSON). Its environment is the daemon's (without
// any VPMTUN_ variable it had) plus
//   VPMTUN_STATE     ready, draining or stopped
//   VPMTUN_NAME      [daemon] name (the host name unless set)
//   VPMTUN_DEVICE    the TUN's name ("" without a TUN)
//   VPMTUN_PREFIXES  the prefixes routed into the TUN, e.g. "10.99.0.0/24 fd00:99::/64"
//   VPMTUN_CONFIG    the configuration file
// Hooks run one at a time, in the order asked for; one still running after
// [daemon] hook_timeout has its process group killed (SIGKILL). The daemon
// never waits on a hook inside its event loop: poll() reaps and starts them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "vpm/config.hpp"

namespace tun {

enum class HookState : uint8_t { ready, draining, stopped };

struct HookCounters {
  uint64_t run = 0;        // hooks started
  uint64_t failed = 0;     // ended with a status other than 0, or could not start
  uint64_t timed_out = 0;  // killed at the time limit
};

class Hooks {
 public:
  // `device`: the TUN's name.
  Hooks(const vpm::Config& cfg, std::string device);
  ~Hooks();
  Hooks(const Hooks&) = delete;
  Hooks& operator=(const Hooks&) = delete;

  // Takes the commands, name and time limit of a reloaded configuration; a
  // hook already running keeps its own.
  void configure(const vpm::Config& cfg);
  // Whether `state` has a command.
  bool has(HookState state) const { return !command(state).empty(); }
  // Queues the hook of `state`, if it has one, and starts it if none runs.
  void start(HookState state, uint64_t now_ms);
  // Reaps a hook that ended, kills one past its time limit, starts the next.
  void poll(uint64_t now_ms);
  // A hook runs or waits to.
  bool busy() const { return pid_ > 0 || !queued_.empty(); }
  // Runs the hook of `state` after those queued, and returns when all ended
  // (each within its time limit).
  void run_to_end(HookState state);

  const HookCounters& counters() const { return counters_; }

 private:
  const std::string& command(HookState state) const;
  void launch(HookState state, uint64_t now_ms);
  void ended(int status, uint64_t now_ms);
  void log_output(bool last);

  std::string device_;
  vpm::DaemonConfig cfg_;
  std::vector<std::string> env_;  // VPMTUN_*=... but VPMTUN_STATE
  std::deque<HookState> queued_;
  pid_t pid_ = -1;  // the running hook
  HookState running_ = HookState::ready;
  uint64_t started_ms_ = 0, limit_ms_ = 0;
  int out_fd_ = -1;      // the running hook's stdout and stderr
  std::string partial_;  // of its output: a line not yet ended
  uint64_t lines_ = 0;   // of its output: lines seen
  HookCounters counters_;
};

}  // namespace tun
