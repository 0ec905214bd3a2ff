// The daemon's event loop and packet plumbing.
#include "tun/daemon.hpp"

#include <fmt/core.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "tun/capture.hpp"
#include "tun/config_file.hpp"
#include "tun/control.hpp"
#include "tun/coop.hpp"
#include "tun/hooks.hpp"
#include "tun/instance_channel.hpp"
#include "tun/instances.hpp"
#include "tun/metrics.hpp"
#include "tun/report.hpp"
#include "tun/supervisor.hpp"
#include "vpm/refusal.hpp"
#include "vpm/reload.hpp"

namespace tun {

uint64_t monotonic_ms() {
  using namespace std::chrono;
  return static_cast<uint64_t>(
      duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count());
}

namespace {

// A worker of several runs no hooks: its supervisor does.
vpm::Config hooks_of(vpm::Config cfg, const DaemonOptions& opt) {
  if (opt.share.count > 1) cfg.daemon.on_ready = cfg.daemon.on_drain = cfg.daemon.on_stop = "";
  return cfg;
}

}  // namespace

Daemon::Daemon(const vpm::Config& cfg, PacketDevice& device, const DaemonOptions& opt)
    : engine_(cfg, opt.share),
      device_(device),
      opt_(opt),
      buffer_(kMaxPacket),
      started_ms_(monotonic_ms()),
      file_config_(cfg) {
  auto* tun = dynamic_cast<TunDevice*>(&device);
  hooks_ = std::make_unique<Hooks>(hooks_of(cfg, opt), tun ? tun->name() : "");
  // A worker's files are its supervisor's, made before it.
  if (!opt.capture_tun.empty())
    capture_tun_ = std::make_unique<Capture>(
        opt.capture_fds[0] >= 0 ? opt.capture_fds[0] : Capture::create(opt.capture_tun));
  if (!opt.capture_stack.empty())
    capture_stack_ = std::make_unique<Capture>(
        opt.capture_fds[1] >= 0 ? opt.capture_fds[1] : Capture::create(opt.capture_stack));
  auto rules = [this]() -> const vpm::Config& { return engine_.rules().config(); };
  stack::Instances* programs = nullptr;
  if (opt.instances.channel >= 0) {
    remote_instances_ = std::make_unique<RemoteInstances>(opt.instances, *this, rules);
    programs = remote_instances_.get();
  } else if (std::any_of(cfg.apps.begin(), cfg.apps.end(), vpm::runs_programs)) {
    instances_ = std::make_unique<InstanceRegistry>(vpm::app_socket_path(cfg.vpm), *this, rules);
    programs = instances_.get();
  }
  stack_ = std::make_unique<stack::Stack>(
      engine_.rules(), device.mtu(), [this](std::span<uint8_t> p) { from_stack(p); }, this,
      programs);
  if (device.segments()) stack_->send_large_segments();
  stack_->set_workers(opt.share.count);
  if (vpm::uses_cooperation(cfg)) {
    if (opt.coop_key.empty()) throw std::runtime_error("cooperative mode needs its key");
    coop_server_ = std::make_unique<CoopServer>(engine_.rules(), opt.coop_key);
    engine_.admit_with(
        [s = coop_server_.get()](const vpm::Endpoint& client, const vpm::IpAddr& vaddr, uint16_t p2,
                                 uint32_t isn) { return s->admit(client, vaddr, p2, isn); });
    stack_->negotiate_with(coop_server_.get());
    coop_client_ = std::make_unique<CoopClient>(*this, opt.coop_key);
    if (instances_) instances_->dial_with(coop_client_.get());
  }
}

Daemon::~Daemon() {
  // These close their sockets while the epoll set still exists.
  metrics_.reset();
  control_.reset();
  stack_.reset();
  instances_.reset();
  remote_instances_.reset();
  coop_client_.reset();
}

void Daemon::send(std::span<uint8_t> packet, uint16_t mss) {
  flush_acks();
  write_out(packet, mss);
}

void Daemon::write_out(std::span<uint8_t> packet, uint16_t mss) {
  if (capture_tun_) capture_tun_->write(packet);
  if (!device_.write(packet, mss)) ++counters_.device_write_errors;
}

void Daemon::flush_acks() {
  if (!acks_.empty()) acks_.flush([this](std::span<uint8_t> ack) { write_out(ack, 0); });
}

void Daemon::from_device(std::span<uint8_t> packet, bool verified, uint64_t now_ms) {
  if (capture_tun_) capture_tun_->write(packet);
  vpm::Result r = engine_.to_stack(packet, now_ms);
  switch (r.verdict) {
    case vpm::Verdict::translated:
    case vpm::Verdict::passed:
      if (capture_stack_) capture_stack_->write(packet);
      stack_->input(packet, r.app, verified);
      break;
    case vpm::Verdict::refused:
      // The engine has not touched a refused packet: answer it as the TUN side sees it.
      if (vpm::build_refusal(packet, refusal_)) {
        send(refusal_);
        ++counters_.refusals_sent;
      }
      log_verdict("refused", packet, r.reason, now_ms);
      break;
    case vpm::Verdict::dropped:
      if (r.reason == vpm::Drop::coop_pending && coop_server_)
        coop_server_->hold(packet, now_ms);  // let in when its Ack is (release_held)
      else
        log_verdict("dropped", packet, r.reason, now_ms);
      break;
  }
}

// SYNs that overtook their Ack, now that it is in (tun/coop.hpp).
void Daemon::release_held(uint64_t now_ms) {
  if (!coop_server_) return;
  for (auto& syn : coop_server_->released(now_ms)) from_device(syn, false, now_ms);
}

// Refusals and drops are logged at info, at most kLogBurst lines a second
// (split between workers); the rest are counted, and the count is logged
// once the second is over.
constexpr uint64_t kLogBurst = 10;

void Daemon::end_log_second(uint64_t now_ms) {
  if (now_ms - log_second_ms_ < 1000) return;
  if (log_suppressed_)
    spdlog::info("{} more refusals and drops not logged (at most {} a second; see vpmtun stats)",
                 log_suppressed_, kLogBurst);
  const auto& e = engine_.counters();
  uint64_t full = e.evicted_table_full - logged_evictions_[0];
  uint64_t port = e.evicted_no_port - logged_evictions_[1];
  if (full + port > 0)
    spdlog::info(
        "evicted {} unconfirmed flows (half-open TCP, unanswered UDP) to make room: {} for a "
        "full table (max_flows {}), {} for a free hidden port",
        full + port, full, engine_.flows().max_flows(), port);
  logged_evictions_ = {e.evicted_table_full, e.evicted_no_port};
  log_second_ms_ = now_ms;
  log_lines_ = log_suppressed_ = 0;
}

void Daemon::log_verdict(const char* what, std::span<uint8_t> packet, vpm::Drop reason,
                         uint64_t now_ms) {
  if (!spdlog::should_log(spdlog::level::info)) return;
  end_log_second(now_ms);
  if (log_lines_ == std::max<uint64_t>(1, kLogBurst / opt_.share.count)) {
    ++log_suppressed_;
    return;
  }
  ++log_lines_;
  spdlog::info("{} {}: {}", what, vpm::describe_packet(packet), vpm::drop_description(reason));
}

// Each line of a reload's outcome, at info when it worked, else at error.
void log_reload(bool ok, const std::string& said) {
  for (size_t at = 0; at < said.size();) {
    size_t end = std::min(said.find('\n', at), said.size());
    if (ok)
      spdlog::info("{}", said.substr(at, end - at));
    else
      spdlog::error("{}", said.substr(at, end - at));
    at = end + 1;
  }
}

void Daemon::from_stack(std::span<uint8_t> packet) {
  if (capture_stack_) capture_stack_->write(packet);
  vpm::Result r = engine_.to_tun(packet, now_ms_);
  if (r.verdict != vpm::Verdict::translated && r.verdict != vpm::Verdict::passed) return;
  if (!batching_ || !acks_.take(packet)) send(packet, r.mss);
}

void Daemon::drain_device(uint64_t now_ms) {
  now_ms_ = now_ms;
  // Bounded, so timers and signals are not starved under a flood.
  stack_->begin_batch();
  // While capturing, no ACK is merged: the two captures stay packet for
  // packet what replay makes of one from the other.
  batching_ = !capture_tun_ && !capture_stack_;
  for (int i = 0; i < 1024; ++i) {
    bool verified = false;
    size_t n = device_.read(buffer_, verified);
    if (n == 0) break;
    from_device({buffer_.data(), n}, verified, now_ms);
  }
  stack_->end_batch();
  batching_ = false;
  flush_acks();
  release_held(now_ms);
}

void Daemon::tick(uint64_t now_ms) {
  now_ms_ = now_ms;
  stack_->poll();
  if (instances_) instances_->expire(now_ms);
  if (coop_client_) coop_client_->expire(now_ms);
  release_held(now_ms);
  engine_.expire(now_ms, 4096);
  end_log_second(now_ms);
  if (capture_tun_) capture_tun_->flush();
  if (capture_stack_) capture_stack_->flush();
  // Workers drop drained apps together, when their supervisor says so.
  if (opt_.share.count == 1 && now_ms - drained_check_ms_ >= 1000) {
    drained_check_ms_ = now_ms;
    drop_drained_apps(busy_apps());
  }
}

std::vector<size_t> Daemon::busy_apps() const {
  std::vector<size_t> busy = engine_.flows_per_app();
  std::vector<size_t> conns = stack_->connections_per_app();
  // The same connection is usually in both: count it once.
  for (size_t i = 0; i < busy.size() && i < conns.size(); ++i)
    busy[i] = std::max(busy[i], conns[i]);
  return busy;
}

// A draining app whose last flow has ended goes: merging the file's rules
// again leaves it out.
void Daemon::drop_drained_apps(const std::vector<size_t>& busy) {
  if (stopping_) return;
  const auto& apps = engine_.rules().config().apps;
  for (size_t a = 0; a < apps.size() && a < busy.size(); ++a) {
    if (!apps[a].draining || busy[a] > 0) continue;
    auto [ok, said] = reload(file_config_, &busy);
    log_reload(ok, said);
    return;
  }
}

std::pair<bool, std::string> Daemon::reload(const vpm::Config& next,
                                            const std::vector<size_t>* busy) {
  if (stopping_) return {false, "the daemon is stopping; nothing changed\n"};
  const vpm::Config& running = engine_.rules().config();
  auto errors = vpm::reload_errors(running, next);
  if (!errors.empty()) {
    std::string out;
    for (auto& e : errors) out += e.str() + "\n";
    return {false, out + "nothing changed: the running rules stay\n"};
  }
  vpm::Reload r = vpm::merge_reload(running, next, busy ? *busy : busy_apps());
  engine_.reload(r.config, r.app_of);
  std::string failed = stack_->reload(r.app_of);
  hooks_->configure(hooks_of(next, opt_));
  file_config_ = next;
  if (!failed.empty()) return {false, "the new rules are in, but " + failed + "\n"};
  return {true, r.summary + "\n"};
}

std::pair<bool, std::string> Daemon::reload_file(const std::vector<size_t>* busy) {
  auto outcome = read_and_reload(busy);
  ++(outcome.first ? counters_.reloads : counters_.reloads_refused);
  return outcome;
}

std::pair<bool, std::string> Daemon::read_and_reload(const std::vector<size_t>* busy) {
  const std::string& path = file_config_.file;
  auto parsed = read_config(path);
  if (auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&parsed)) {
    std::string out;
    for (auto& line : error_report(path, *errors, "nothing changed: the running rules stay"))
      out += line + "\n";
    return {false, out};
  }
  auto& next = std::get<vpm::Config>(parsed);
  auto [ok, said] = reload(next, busy);
  return {ok, (ok ? "reloaded " + path + ": " : "") + said};
}

void Daemon::serve_control(const std::string& path) {
  control_ = std::make_unique<ControlServer>(
      path, *this, [this](const std::string& request) { return answer(request); });
}

void Daemon::serve_supervisor(int channel) {
  watch(channel, EPOLLIN, [this, channel](uint32_t) {
    auto request = read_frame(channel, 1000);
    if (!request) {  // the supervisor is gone: stop as for SIGTERM
      unwatch(channel);
      ::close(channel);
      ::kill(::getpid(), SIGTERM);
      return;
    }
    std::pair<bool, std::string> reply;
    // "reload" and "settle" carry the busy counts of all the workers.
    std::vector<size_t> busy;
    auto read_busy = [&](std::string_view verb) {
      if (!request->starts_with(verb)) return false;
      std::string_view rest = std::string_view(*request).substr(verb.size());
      while (!rest.empty()) {
        size_t n = 0;
        auto [p, ec] = std::from_chars(rest.data() + 1, rest.data() + rest.size(), n);
        if (rest[0] != ' ' || ec != std::errc()) return false;
        busy.push_back(n);
        rest.remove_prefix(static_cast<size_t>(p - rest.data()));
      }
      return busy.size() == engine_.rules().config().apps.size();
    };
    if (*request == "figures") {
      reply = {true, encode(figures_of(*this))};
    } else if (*request == "busy") {
      std::string out;
      const auto& apps = engine_.rules().config().apps;
      std::vector<size_t> mine = busy_apps();
      for (size_t a = 0; a < apps.size(); ++a)
        out += fmt::format("{}{}{}", a ? " " : "", mine[a], apps[a].draining ? "d" : "");
      reply = {true, out};
    } else if (read_busy("reload")) {
      if (remote_instances_) remote_instances_->hear();  // the peer tables of apps it adds
      reply = reload_file(&busy);
      log_reload(reply.first, reply.second);
    } else if (read_busy("settle")) {
      drop_drained_apps(busy);
      reply = {true, ""};
    } else if (request->starts_with("render ")) {
      size_t line = std::min(request->find('\n'), request->size());
      std::string what = request->substr(0, line);
      auto f = decode(std::string_view(*request).substr(std::min(line + 1, request->size())));
      if (f && what.starts_with("render apps"))
        reply = {true, render_apps(*this, *f, what.ends_with(" json"))};
      else if (f && what == "render metrics")
        reply = {true, render_metrics(*this, *f)};
      else
        reply = {false, "cannot " + what + "\n"};
    } else {
      reply = answer(*request);
    }
    if (!write_frame(channel, (reply.first ? "+" : "-") + reply.second))
      spdlog::error("could not answer the supervisor: {}", std::strerror(errno));
  });
}

void Daemon::serve_metrics(const vpm::Endpoint& listen) {
  metrics_ = std::make_unique<MetricsServer>(
      listen, *this, [this] { return render_metrics(*this, figures_of(*this)); });
}

std::pair<bool, std::string> Daemon::answer(const std::string& request) {
  std::vector<std::string> words = request_words(request);
  if (words.empty()) return {false, "empty request\n"};
  bool json = false;
  TableFilter filter;
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w == "json") {
      json = true;
    } else if (w.starts_with("app=")) {
      filter.app = w.substr(4);
      bool known = false;
      for (auto& a : engine_.rules().config().apps) known |= a.name == filter.app;
      if (!known) return {false, "no app is named '" + filter.app + "'\n"};
    } else if (w.starts_with("client=")) {
      std::string why;
      filter.client = vpm::Prefix::parse(w.substr(7), &why);
      if (!filter.client) return {false, "--client " + w.substr(7) + ": " + why + "\n"};
    } else {
      return {false, "unknown argument '" + w + "'\n"};
    }
  }
  const std::string& verb = words[0];
  if (verb == "stats") return {true, render_stats(figures_of(*this), json)};
  if (verb == "table") return {true, render_table(*this, filter, json)};
  if (verb == "apps") return {true, render_apps(*this, figures_of(*this), json)};
  if (verb == "reload") {
    auto [ok, said] = reload_file();
    log_reload(ok, said);
    return {ok, said};
  }
  return {false, "unknown request '" + verb + "' (stats, table, apps, reload)\n"};
}

int Daemon::run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  int sfd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  itimerspec every{{0, 50'000'000}, {0, 50'000'000}};
  timerfd_settime(tfd, 0, &every, nullptr);
  if (device_.fd() >= 0) add_own(device_.fd());
  add_own(sfd);
  add_own(tfd);

  int code = 0;
  // SIGTERM/SIGINT: on_drain runs first (withdrawing the node from the
  // routing) while everything still serves; then the listeners close and
  // the open connections get drain_ms.
  bool withdrawing = false;
  uint64_t drain_until = 0;
  auto begin_drain = [&](uint64_t now, const char* signal) {
    drain_until = now + opt_.drain_ms;
    stack_->stop_accepting();
    spdlog::info("{}: draining {} connections for up to {} ms (again to stop now)", signal,
                 stack_->open_connections(), opt_.drain_ms);
  };
  const char* signal_name = "";
  hooks_->start(HookState::ready, monotonic_ms());
  for (bool running = true; running;) {
    epoll_event events[64];
    int n = wait(events, 64, -1);
    if (n < 0 && errno != EINTR) {
      spdlog::error("epoll: {}", std::strerror(errno));
      code = 1;
      break;
    }
    uint64_t now = monotonic_ms();
    for (int i = 0; i < n; ++i) {
      int fd = fd_of(events[i]);
      now_ms_ = now;
      if (deliver(events[i])) continue;
      if (fd == device_.fd()) {
        drain_device(now);
      } else if (fd == tfd) {
        uint64_t expirations;
        while (::read(tfd, &expirations, sizeof expirations) > 0) {
        }
        tick(now);
        hooks_->poll(now);
        if (withdrawing && !hooks_->busy()) {
          withdrawing = false;
          begin_drain(now, signal_name);
        }
        if (drain_until && (stack_->open_connections() == 0 || now >= drain_until)) running = false;
      } else if (fd == sfd) {
        signalfd_siginfo si{};
        while (::read(sfd, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGHUP) {
            auto [ok, said] = reload_file();
            log_reload(ok, "SIGHUP: " + said);
            continue;
          }
          signal_name = si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT";
          if (drain_until || withdrawing ||
              (stack_->open_connections() == 0 && !hooks_->has(HookState::draining))) {
            spdlog::info("{}: stopping", signal_name);
            running = false;
          } else {
            stopping_ = true;
            if (hooks_->has(HookState::draining)) {
              withdrawing = true;
              spdlog::info("{}: on_drain first, still serving (again to stop now)", signal_name);
              hooks_->start(HookState::draining, now);
            } else {
              begin_drain(now, signal_name);
            }
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
