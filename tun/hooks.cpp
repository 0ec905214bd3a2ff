// The daemon's hooks: see hooks.hpp.
#include "tun/hooks.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <thread>

#include "tun/daemon.hpp"

extern char** environ;

namespace tun {

namespace {

struct Hook {
  const char* state;                     // VPMTUN_STATE
  const char* key;                       // in [daemon] and the log
  std::string vpm::DaemonConfig::*command;
};
constexpr Hook kHooks[] = {{"ready", "on_ready", &vpm::DaemonConfig::on_ready},
                           {"draining", "on_drain", &vpm::DaemonConfig::on_drain},
                           {"stopped", "on_stop", &vpm::DaemonConfig::on_stop}};
const Hook& hook(HookState s) { return kHooks[static_cast<size_t>(s)]; }
const char* hook_key(HookState s) { return hook(s).key; }

// The network of a TUN address: 10.99.0.1/24 is 10.99.0.0/24.
std::string network(vpm::Prefix p) {
  int bits = p.addr.is_v4() ? 96 + p.len : p.len;
  for (size_t i = 0; i < 16; ++i) {
    int keep = std::clamp(bits - 8 * static_cast<int>(i), 0, 8);
    p.addr.bytes[i] &= static_cast<uint8_t>(0xff00 >> keep);
  }
  return p.str();
}

}  // namespace

Hooks::Hooks(const vpm::Config& cfg, std::string device) : device_(std::move(device)) {
  configure(cfg);
}

void Hooks::configure(const vpm::Config& cfg) {
  cfg_ = cfg.daemon;
  std::string prefixes;
  for (const auto& p : {cfg.tun.address, cfg.tun.address6})
    if (p) prefixes += (prefixes.empty() ? "" : " ") + network(*p);
  env_ = {"VPMTUN_NAME=" + cfg.daemon.name, "VPMTUN_DEVICE=" + device_,
          "VPMTUN_PREFIXES=" + prefixes, "VPMTUN_CONFIG=" + cfg.file};
}

Hooks::~Hooks() {
  if (pid_ > 0) {
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
}

const std::string& Hooks::command(HookState state) const { return cfg_.*hook(state).command; }

void Hooks::start(HookState state, uint64_t now_ms) {
  if (!has(state)) return;
  queued_.push_back(state);
  poll(now_ms);
}

// The hook's output, one log line per line it wrote: a long line in pieces
// of kMaxLine, at most kMaxLines logged per run. `last`: the hook has ended
// (what is still buffered is logged, and the pipe closed; something it left
// running in the background may hold the pipe, so no end of file is awaited).
void Hooks::log_output(bool last) {
  constexpr size_t kMaxLine = 512;
  constexpr uint64_t kMaxLines = 100;
  auto emit = [&](std::string_view line) {
    if (++lines_ <= kMaxLines) spdlog::info("{}: {}", hook_key(running_), line);
  };
  char buf[4096];
  ssize_t n;
  while (out_fd_ >= 0 && (n = ::read(out_fd_, buf, sizeof buf)) > 0) {
    for (char ch : std::string_view(buf, static_cast<size_t>(n))) {
      if (ch != '\n') partial_ += ch;
      if (ch == '\n' || partial_.size() == kMaxLine) {
        emit(partial_);
        partial_.clear();
      }
    }
  }
  if (!last) return;
  if (!partial_.empty()) emit(partial_);
  if (lines_ > kMaxLines)
    spdlog::info("{}: {} more lines not logged", hook_key(running_), lines_ - kMaxLines);
  partial_.clear();
  lines_ = 0;
  if (out_fd_ >= 0) ::close(out_fd_);
  out_fd_ = -1;
}

void Hooks::poll(uint64_t now_ms) {
  if (pid_ > 0) {
    log_output(false);
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      ended(status, now_ms);
    } else if (now_ms >= started_ms_ + limit_ms_) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      log_output(true);
      ++counters_.timed_out;
      spdlog::warn("{}: still running after {} ms; killed", hook_key(running_), limit_ms_);
      pid_ = -1;
    }
  }
  while (pid_ <= 0 && !queued_.empty()) {
    HookState next = queued_.front();
    queued_.pop_front();
    launch(next, now_ms);
  }
}

void Hooks::ended(int status, uint64_t now_ms) {
  pid_ = -1;
  log_output(true);
  uint64_t took = now_ms - std::min(now_ms, started_ms_);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    spdlog::info("{}: done in {} ms", hook_key(running_), took);
    return;
  }
  ++counters_.failed;
  if (WIFEXITED(status))
    spdlog::warn("{}: exited with status {} after {} ms", hook_key(running_), WEXITSTATUS(status),
                 took);
  else
    spdlog::warn("{}: killed by signal {} after {} ms", hook_key(running_), WTERMSIG(status), took);
}

void Hooks::launch(HookState state, uint64_t now_ms) {
  const std::string cmd = command(state);  // a copy: a reload may change cfg_
  if (cmd.empty()) return;
  std::vector<std::string> vars;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "VPMTUN_", 7) != 0) vars.emplace_back(*e);
  vars.push_back(std::string("VPMTUN_STATE=") + hook(state).state);
  vars.insert(vars.end(), env_.begin(), env_.end());
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};

  int out[2];
  if (::pipe2(out, O_CLOEXEC) < 0) {
    ++counters_.run;
    ++counters_.failed;
    spdlog::warn("{}: cannot make a pipe for its output: {}", hook_key(state), std::strerror(errno));
    return;
  }
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&files, out[1], 1);
  posix_spawn_file_actions_adddup2(&files, out[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // the daemon blocks the signals its signalfd reads
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
  pid_t pid = -1;
  int err = ::posix_spawn(&pid, "/bin/sh", &files, &attr, const_cast<char**>(argv), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&files);
  ::close(out[1]);
  ++counters_.run;
  if (err != 0) {
    ::close(out[0]);
    ++counters_.failed;
    spdlog::warn("{}: cannot run /bin/sh: {}", hook_key(state), std::strerror(err));
    return;
  }
  ::fcntl(out[0], F_SETFL, O_NONBLOCK);
  out_fd_ = out[0];
  pid_ = pid;
  running_ = state;
  started_ms_ = now_ms;
  limit_ms_ = cfg_.hook_timeout_ms;
  spdlog::info("{}: running `{}`", hook_key(state), cmd);
}

void Hooks::run_to_end(HookState state) {
  start(state, monotonic_ms());
  while (busy()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    poll(monotonic_ms());
  }
}

}  // namespace tun
