// The supervisor of several workers: their processes, and answering for them.
#include "tun/supervisor.hpp"

#include <dirent.h>
#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tun/capture.hpp"
#include "tun/config_file.hpp"
#include "tun/control.hpp"
#include "tun/coop.hpp"
#include "tun/hooks.hpp"
#include "tun/instance_channel.hpp"
#include "tun/instances.hpp"
#include "tun/metrics.hpp"
#include "tun/report.hpp"

namespace tun {

namespace {

constexpr uint32_t kMaxFrame = 256u << 20;  // a table of a full flow table fits
constexpr int kAnswerMs = 10000;            // a worker that takes longer is stuck
constexpr uint64_t kRestartMs = 1000;       // a worker starts at most once a second

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool read_all(int fd, char* data, size_t size, uint64_t deadline_ms) {
  while (size > 0) {
    uint64_t now = monotonic_ms();
    if (now >= deadline_ms) return false;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(deadline_ms - now));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = ::recv(fd, data, size, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Closes every descriptor a new worker inherited but `keep`.
void close_inherited(std::initializer_list<int> keep) {
  std::vector<int> fds;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(dir)) {
      int fd = std::atoi(e->d_name);
      if (fd > 2 && fd != ::dirfd(dir) && std::find(keep.begin(), keep.end(), fd) == keep.end())
        fds.push_back(fd);
    }
    ::closedir(dir);
  }
  for (int fd : fds) ::close(fd);
}

std::string exit_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {}", WTERMSIG(status));
  return "stopped";
}

}  // namespace

bool write_frame(int fd, std::string_view body) {
  if (body.size() > kMaxFrame) return false;
  auto size = static_cast<uint32_t>(body.size());
  return write_all(fd, reinterpret_cast<const char*>(&size), sizeof size) &&
         write_all(fd, body.data(), body.size());
}

std::optional<std::string> read_frame(int fd, int timeout_ms) {
  uint64_t deadline = monotonic_ms() + static_cast<uint64_t>(timeout_ms);
  uint32_t size = 0;
  if (!read_all(fd, reinterpret_cast<char*>(&size), sizeof size, deadline) || size > kMaxFrame)
    return std::nullopt;
  std::string body(size, '\0');
  if (!read_all(fd, body.data(), size, deadline)) return std::nullopt;
  return body;
}

Supervisor::Supervisor(const vpm::Config& cfg, TunDevice& device, const DaemonOptions& opt)
    : cfg_(cfg),
      device_(device),
      opt_(opt),
      workers_(device.queues()),
      hooks_(std::make_unique<Hooks>(cfg, device.name())),
      self_(::getpid()) {
  // One file each, which every worker appends to (tun/capture.hpp).
  if (!opt.capture_tun.empty()) opt_.capture_fds[0] = Capture::create(opt.capture_tun);
  if (!opt.capture_stack.empty()) opt_.capture_fds[1] = Capture::create(opt.capture_stack);
  if (!std::any_of(cfg.apps.begin(), cfg.apps.end(), vpm::runs_programs)) return;
  instances_ = std::make_unique<InstanceRegistry>(vpm::app_socket_path(cfg.vpm), *this,
                                                  [this]() -> const vpm::Config& { return cfg_; });
  // The workers inherit the tables' mappings, made before the seals.
  instances_->prepare(cfg_);
  instances_->seal_all();
  instances_->watch([this](uint64_t id, const Instance* added) {
    tell_workers([&](int channel) { return tell_instance(channel, id, added); });
  });
  if (vpm::uses_cooperation(cfg)) {
    coop_client_ = std::make_unique<CoopClient>(*this, opt.coop_key);
    instances_->dial_with(coop_client_.get());
  }
}

Supervisor::~Supervisor() {
  metrics_.reset();
  control_.reset();
  for (size_t q = 0; q < workers_.size(); ++q) {
    end_instances(q);
    if (workers_[q].channel >= 0) ::close(workers_[q].channel);
  }
  for (int fd : opt_.capture_fds)
    if (fd >= 0) ::close(fd);
}

void Supervisor::serve_control(const std::string& path) {
  control_ = std::make_unique<ControlServer>(
      path, *this, [this](const std::string& request) { return answer(request); });
}

void Supervisor::serve_metrics(const vpm::Endpoint& listen) {
  metrics_ = std::make_unique<MetricsServer>(listen, *this, [this] { return metrics(); });
}

void Supervisor::start(size_t q, uint64_t now_ms) {
  int pair[2], inst[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
    spdlog::error("worker {}: socketpair: {}", q, std::strerror(errno));
    workers_[q].restart_at_ms = now_ms + kRestartMs;
    return;
  }
  timeval second{1, 0};
  if (instances_ && (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, inst) < 0 ||
                     ::setsockopt(inst[0], SOL_SOCKET, SO_SNDTIMEO, &second, sizeof second) < 0)) {
    spdlog::error("worker {}: socketpair: {}", q, std::strerror(errno));
    ::close(pair[0]);
    ::close(pair[1]);
    if (inst[0] >= 0) ::close(inst[0]), ::close(inst[1]);
    workers_[q].restart_at_ms = now_ms + kRestartMs;
    return;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pair[0]);
    if (inst[0] >= 0) ::close(inst[0]);
    work(q, pair[1], inst[1]);
  }
  ::close(pair[1]);
  if (inst[1] >= 0) ::close(inst[1]);
  Worker& w = workers_[q];
  if (pid < 0) {
    spdlog::error("worker {}: fork: {}", q, std::strerror(errno));
    ::close(pair[0]);
    if (inst[0] >= 0) ::close(inst[0]);
    w.restart_at_ms = now_ms + kRestartMs;
    return;
  }
  w = {pid, pair[0], inst[0], now_ms, 0};
  if (w.instances >= 0) watch(w.instances, EPOLLIN, [this, q](uint32_t) { serve_instances(q); });
}

void Supervisor::serve_instances(size_t q) {
  Worker& w = workers_[q];
  if (w.instances >= 0 && !serve_instance_channel(w.instances, *instances_, static_cast<int>(q)))
    end_instances(q);
}

void Supervisor::end_instances(size_t q) {
  Worker& w = workers_[q];
  if (w.instances < 0) return;
  unwatch(w.instances);
  ::close(w.instances);
  w.instances = -1;
}

void Supervisor::tell_workers(const std::function<bool(int channel)>& tell) {
  for (size_t q = 0; q < workers_.size(); ++q) {
    Worker& w = workers_[q];
    if (w.instances < 0 || tell(w.instances)) continue;
    spdlog::error("worker {} (pid {}) could not be told of an instance within a second; killing it",
                  q, w.pid);
    ::kill(w.pid, SIGKILL);
    end_instances(q);
  }
}

// In the new process: a daemon on queue q.
void Supervisor::work(size_t q, int channel, int instances) {
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != self_) ::_exit(1);  // the supervisor died before the line above
  device_.use_queue(q);
  close_inherited({device_.fd(), channel, instances, opt_.capture_fds[0], opt_.capture_fds[1]});
  sigset_t child;
  sigemptyset(&child);
  sigaddset(&child, SIGCHLD);
  sigprocmask(SIG_UNBLOCK, &child, nullptr);
  spdlog::set_default_logger(spdlog::default_logger()->clone(fmt::format("vpmtun worker {}", q)));
  int code = 1;
  try {
    DaemonOptions opt = opt_;
    opt.share = {static_cast<uint32_t>(q), static_cast<uint32_t>(workers_.size())};
    if (instances_)
      opt.instances = {instances, instances_->tables(), instances_->relays().instances()};
    Daemon daemon(cfg_, device_, opt);
    daemon.serve_supervisor(channel);
    code = daemon.run();
    const auto& c = daemon.engine().counters();
    spdlog::info("stopped: {} packets in, {} out, {} translated, {} dropped, {} refused",
                 c.packets[vpm::to_stack_side], c.packets[vpm::to_tun_side], c.translated,
                 c.dropped, c.refused);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
  }
  spdlog::default_logger()->flush();
  ::_exit(code);
}

size_t Supervisor::running() const {
  return static_cast<size_t>(
      std::count_if(workers_.begin(), workers_.end(), [](const Worker& w) { return w.pid > 0; }));
}

void Supervisor::signal_workers(int sig) {
  for (auto& w : workers_)
    if (w.pid > 0) ::kill(w.pid, sig);
}

// Only the workers: the hooks reap their own.
void Supervisor::reap(uint64_t now_ms) {
  for (size_t q = 0; q < workers_.size(); ++q) {
    Worker& w = workers_[q];
    int status = 0;
    if (w.pid <= 0 || ::waitpid(w.pid, &status, WNOHANG) != w.pid) continue;
    ::close(w.channel);
    end_instances(q);
    pid_t pid = std::exchange(w.pid, -1);
    w.channel = -1;
    if (stopping_) continue;
    w.restart_at_ms = std::max(now_ms, w.started_ms + kRestartMs);
    spdlog::error("worker {} (pid {}) {}; starting it again on its queue", q, pid,
                  exit_status(status));
    ++counters_.worker_restarts;
  }
}

std::pair<bool, std::string> Supervisor::ask(size_t q, const std::string& request) {
  Worker& w = workers_[q];
  if (w.pid <= 0) return {false, fmt::format("worker {} is not running (restarting)\n", q)};
  std::optional<std::string> reply;
  if (write_frame(w.channel, request)) reply = read_frame(w.channel, kAnswerMs);
  if (!reply || reply->empty()) {
    // A late answer would be taken for the next one's: the worker goes.
    spdlog::error("worker {} (pid {}) did not answer '{}' within {} ms; killing it", q, w.pid,
                  request.substr(0, request.find('\n')), kAnswerMs);
    ::kill(w.pid, SIGKILL);
    return {false, fmt::format("worker {} did not answer\n", q)};
  }
  return {(*reply)[0] == '+', reply->substr(1)};
}

std::optional<Figures> Supervisor::summed(std::string& why) {
  std::optional<Figures> sum;
  for (size_t q = 0; q < workers_.size(); ++q) {
    auto [ok, body] = ask(q, "figures");
    auto f = ok ? decode(body) : std::nullopt;
    if (!f) {
      why = ok ? fmt::format("worker {} sent figures that do not read\n", q) : body;
      return std::nullopt;
    }
    if (!sum)
      sum = std::move(f);
    else if (!add(*sum, *f)) {
      why = fmt::format("worker {} has other rules than worker 0 (a reload in progress?)\n", q);
      return std::nullopt;
    }
  }
  // What the supervisor counts replaces the workers' own.
  const auto& h = hooks_->counters();
  std::vector<std::pair<const char*, uint64_t>> own = {
      {"reloads", counters_.reloads},
      {"reloads_refused", counters_.reloads_refused},
      {"hooks_run", h.run},
      {"hooks_failed", h.failed},
      {"hooks_timed_out", h.timed_out},
      {"workers", running()},
      {"worker_restarts", counters_.worker_restarts}};
  auto& list = sum->counters;
  auto last = list.begin();
  for (const auto& [name, value] : own) {
    std::string_view wanted = name;  // a lambda may not capture a structured binding (C++20)
    auto it = std::find_if(list.begin(), list.end(), [wanted](const Figures::Counter& c) {
      return c.group == "daemon" && c.name == wanted;
    });
    if (it == list.end()) it = list.insert(last + 1, {"daemon", std::string(wanted), 0});
    it->value = value;
    last = it;
  }
  // The registry and the Dials are here: their counters join the
  // workers', and the instances take the workers' counts.
  std::vector<Figures::Counter> mine;
  if (instances_) mine = library_counters(instances_.get(), instances_->relays());
  if (coop_client_) {
    auto more = coop_client_counters(*coop_client_);
    mine.insert(mine.end(), more.begin(), more.end());
  }
  for (const auto& more : mine)
    for (auto& c : list)
      if (c.group == more.group && c.name == more.name) c.value += more.value;
  if (instances_) {
    std::unordered_map<uint64_t, const InstanceInfo*> theirs;
    for (const auto& t : sum->instances) theirs.emplace(t.id, &t);
    auto listed = instances_->instances();
    for (auto& i : listed)
      if (auto it = theirs.find(i.id); it != theirs.end()) i.add_counts(*it->second);
    sum->instances = std::move(listed);
  }
  return sum;
}

std::pair<bool, std::string> Supervisor::answer(const std::string& request) {
  std::vector<std::string> words = request_words(request);
  if (words.empty()) return {false, "empty request\n"};
  if (words[0] == "reload") return reload_all();
  // Worker 0 checks the request, and its rules render what is summed.
  auto first = ask(0, request);
  if (!first.first) return first;
  bool json = std::find(words.begin(), words.end(), "json") != words.end();
  const std::string& verb = words[0];
  if (verb == "stats" || verb == "apps") {
    std::string why;
    auto sum = summed(why);
    if (!sum) return {false, why};
    if (verb == "stats") return {true, render_stats(*sum, json)};
    return ask(0, std::string("render apps") + (json ? " json" : "") + "\n" + encode(*sum));
  }
  if (verb != "table") return first;
  std::vector<std::string> parts = {first.second};
  for (size_t q = 1; q < workers_.size(); ++q) {
    auto [ok, body] = ask(q, request);
    if (!ok) return {false, body};
    parts.push_back(std::move(body));
  }
  return {true, join_tables(parts, json)};
}

std::string Supervisor::metrics() {
  std::string why;
  auto sum = summed(why);
  if (!sum) return "# " + why;
  auto [ok, body] = ask(0, "render metrics\n" + encode(*sum));
  return ok ? body : "# " + body;
}

std::string Supervisor::Busy::words() const {
  std::string out;
  for (size_t n : flows) out += " " + std::to_string(n);
  return out;
}

std::optional<Supervisor::Busy> Supervisor::busy(std::string& why) {
  Busy sum;
  for (size_t q = 0; q < workers_.size(); ++q) {
    auto [ok, body] = ask(q, "busy");
    if (!ok) {
      why = body;
      return std::nullopt;
    }
    std::vector<size_t> flows;
    std::vector<bool> draining;
    for (size_t at = 0; at < body.size();) {
      size_t end = std::min(body.find(' ', at), body.size());
      std::string word = body.substr(at, end - at);
      draining.push_back(word.ends_with('d'));
      flows.push_back(std::strtoull(word.c_str(), nullptr, 10));
      at = end + 1;
    }
    if (q == 0) {
      sum = {flows, draining};
    } else if (flows.size() != sum.flows.size() || draining != sum.draining) {
      why = fmt::format("worker {} has other rules than worker 0\n", q);
      return std::nullopt;
    } else {
      for (size_t a = 0; a < flows.size(); ++a) sum.flows[a] += flows[a];
    }
  }
  return sum;
}

// Drained apps go from every worker at once, when none has a flow left.
void Supervisor::settle() {
  std::string why;
  auto b = busy(why);
  if (!b) return;
  bool drained = false;
  for (size_t a = 0; a < b->flows.size(); ++a) drained |= b->draining[a] && b->flows[a] == 0;
  if (!drained) return;
  for (size_t q = 0; q < workers_.size(); ++q) ask(q, "settle" + b->words());
  spdlog::info("drained apps removed from every worker");
}

std::pair<bool, std::string> Supervisor::reload_all() {
  const std::string& path = cfg_.file;
  auto parsed = read_config(path);
  std::pair<bool, std::string> outcome;
  if (auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&parsed)) {
    std::string out;
    for (auto& line : error_report(path, *errors, "nothing changed: the running rules stay"))
      out += line + "\n";
    outcome = {false, out};
  } else if (stopping_) {
    outcome = {false, "the daemon is stopping; nothing changed\n"};
  } else {
    // Every worker reads the same file (they agree unless it changes
    // meanwhile) and keeps an app that is busy in any of them.
    std::string why;
    auto b = busy(why);
    std::string request = "reload" + (b ? b->words() : "");
    // The peer tables of apps it adds, for the workers to map first.
    if (instances_ && b)
      for (const auto& table : instances_->prepare(std::get<vpm::Config>(parsed)))
        tell_workers([&](int channel) { return tell_table(channel, table.first, table.second); });
    outcome = b ? ask(0, request) : std::make_pair(false, why);
    for (size_t q = 1; q < workers_.size() && outcome.first; ++q) {
      auto [ok, said] = ask(q, request);
      if (!ok) outcome = {false, fmt::format("worker {}: {}", q, said)};
    }
    if (instances_) instances_->seal_all();
    if (outcome.first) {
      cfg_ = std::get<vpm::Config>(parsed);
      hooks_->configure(cfg_);
    }
  }
  ++(outcome.first ? counters_.reloads : counters_.reloads_refused);
  return outcome;
}

int Supervisor::run() {
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) sigaddset(&signals, s);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  int sfd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  itimerspec every{{0, 50'000'000}, {0, 50'000'000}};
  timerfd_settime(tfd, 0, &every, nullptr);
  add_own(sfd);
  add_own(tfd);
  uint64_t now = monotonic_ms();
  for (size_t q = 0; q < workers_.size(); ++q) start(q, now);
  spdlog::info("{} workers, one per queue of {}", workers_.size(), device_.name());
  hooks_->start(HookState::ready, now);

  int code = 0;
  bool withdrawing = false;  // on_drain runs; the workers still serve
  auto stop_workers = [&](const char* signal) {
    spdlog::info("{}: the workers drain (again to stop now)", signal);
    signal_workers(SIGTERM);
  };
  const char* signal_name = "";
  while (!stopping_ || running() > 0) {
    epoll_event events[16];
    int n = wait(events, 16, -1);
    if (n < 0 && errno != EINTR) {
      spdlog::error("epoll: {}", std::strerror(errno));
      code = 1;
      signal_workers(SIGKILL);
      break;
    }
    now = monotonic_ms();
    for (int i = 0; i < n; ++i) {
      if (deliver(events[i])) continue;
      int fd = fd_of(events[i]);
      if (fd == tfd) {
        uint64_t expirations;
        while (::read(tfd, &expirations, sizeof expirations) > 0) {
        }
        hooks_->poll(now);
        if (instances_) instances_->expire(now);
        if (coop_client_) coop_client_->expire(now);
        if (withdrawing && !hooks_->busy()) {
          withdrawing = false;
          stop_workers(signal_name);
        }
        for (size_t q = 0; q < workers_.size(); ++q) {
          Worker& w = workers_[q];
          if (!stopping_ && w.pid <= 0 && w.restart_at_ms && now >= w.restart_at_ms) start(q, now);
        }
        if (!stopping_ && running() == workers_.size() && now - settled_ms_ >= 1000) {
          settled_ms_ = now;
          settle();
        }
      } else if (fd == sfd) {
        signalfd_siginfo si{};
        while (::read(sfd, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGCHLD) {
            reap(now);
          } else if (si.ssi_signo == SIGHUP) {
            auto [ok, said] = reload_all();
            log_reload(ok, "SIGHUP: " + said);
          } else if (!stopping_) {
            stopping_ = true;
            signal_name = si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT";
            if (hooks_->has(HookState::draining)) {
              withdrawing = true;
              spdlog::info("{}: on_drain first, still serving (again to stop now)", signal_name);
              hooks_->start(HookState::draining, now);
            } else {
              stop_workers(signal_name);
            }
          } else {
            // Two signals, which do not merge into one as the same one twice
            // would: a worker that has not begun to drain stops too.
            spdlog::info("{}: stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
            withdrawing = false;
            signal_workers(SIGTERM);
            signal_workers(SIGINT);
          }
        }
      }
    }
  }
  hooks_->run_to_end(HookState::stopped);
  ::close(tfd);
  ::close(sfd);
  return code;
}

}  // namespace tun
