// `vpmtun run`: the daemon in the foreground.
#include "run.hpp"

#include <fmt/core.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "tun/config_file.hpp"
#include "tun/daemon.hpp"
#include "tun/device.hpp"
#include "tun/instances.hpp"
#include "tun/supervisor.hpp"

namespace vpmtun {

namespace {

// Everything that needs root is done by now: the TUN is open and configured
// (its addresses and routes vanish with its file descriptor, which needs no
// privilege), the control socket and the metrics port are bound, captures
// are open. So the daemon keeps no capability at all. Its sockets' files
// are handed to the user, so that it may remove them at exit.
void drop_privileges(const std::string& user, const std::vector<std::string>& sockets) {
  errno = 0;
  passwd* pw = ::getpwnam(user.c_str());
  if (!pw) throw std::runtime_error("[daemon] user = \"" + user + "\": no such user");
  for (const auto& path : sockets)
    if (::chown(path.c_str(), pw->pw_uid, pw->pw_gid) < 0)
      throw std::runtime_error(path + ": giving it to " + user + ": " + std::strerror(errno));
  if (::initgroups(pw->pw_name, pw->pw_gid) < 0 || ::setgid(pw->pw_gid) < 0 ||
      ::setuid(pw->pw_uid) < 0)
    throw std::runtime_error("dropping to user " + user + ": " + std::strerror(errno));
  if (::setuid(0) == 0) throw std::runtime_error("dropping to user " + user + ": root came back");
}

// systemd's readiness protocol (sd_notify(3)): one datagram to
// $NOTIFY_SOCKET, when systemd started us with Type=notify.
void notify_systemd(const char* state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len >= sizeof a.sun_path) return;
  std::memcpy(a.sun_path, path, len);
  if (a.sun_path[0] == '@') a.sun_path[0] = '\0';  // abstract namespace
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  ::sendto(fd, state, std::strlen(state), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&a),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  ::close(fd);
}

// Drops to [daemon] user once everything is bound, or warns of root.
void settle_privileges(const vpm::Config& cfg, std::vector<std::string> sockets) {
  if (!cfg.daemon.user.empty())
    drop_privileges(cfg.daemon.user, sockets);
  else if (::geteuid() == 0)
    spdlog::warn("running as root: set [daemon] user to drop privileges once set up");
}

std::string device_line(const vpm::Config& cfg, const std::string& name) {
  std::string addrs;
  if (cfg.tun.address) addrs += " " + cfg.tun.address->str();
  if (cfg.tun.address6) addrs += " " + cfg.tun.address6->str();
  return fmt::format("{} up (mtu {}{}{})", name, cfg.tun.mtu,
                     cfg.tun.configure ? "," : ", not configured by vpmtun", addrs);
}

std::string serving_line(const vpm::Config& cfg, const std::string& library_socket) {
  return fmt::format(
      "{} apps; control socket {}{}{}{}", cfg.apps.size(),
      cfg.vpm.control_socket.empty() ? "none" : cfg.vpm.control_socket,
      library_socket.empty() ? "" : "; library socket " + library_socket,
      cfg.metrics.listen ? "; metrics http://" + cfg.metrics.listen->str() + "/metrics" : "",
      cfg.daemon.user.empty() ? "" : "; running as " + cfg.daemon.user);
}

// [tun] queues > 1: a supervisor and one worker per queue (tun/supervisor.hpp).
int run_workers(const vpm::Config& cfg, const tun::DaemonOptions& opt) {
  tun::TunDevice device(cfg.tun);
  if (vpm::uses_cooperation(cfg)) {
    device.steer_by_addresses();
    spdlog::info(
        "{}: a client's packets reach one worker, picked by their addresses "
        "(cooperative mode)",
        device.name());
  }
  tun::Supervisor supervisor(cfg, device, opt);
  std::vector<std::string> sockets;
  if (!cfg.vpm.control_socket.empty()) {
    supervisor.serve_control(cfg.vpm.control_socket);
    sockets.push_back(cfg.vpm.control_socket);
  }
  if (!supervisor.library_socket().empty()) sockets.push_back(supervisor.library_socket());
  if (cfg.metrics.listen) supervisor.serve_metrics(*cfg.metrics.listen);
  settle_privileges(cfg, sockets);
  spdlog::info("{}", device_line(cfg, device.name()));
  spdlog::info("{}", serving_line(cfg, supervisor.library_socket()));
  notify_systemd("READY=1");
  int code = supervisor.run();
  notify_systemd("STOPPING=1");
  spdlog::info("stopped; {} removed with the device", device.name());
  return code;
}

}  // namespace

int run_daemon(vpm::Config cfg, tun::DaemonOptions opt) {
  try {
    bool listens = std::any_of(cfg.apps.begin(), cfg.apps.end(),
                               [](const vpm::AppConfig& a) { return !a.listen.empty(); });
    if (!cfg.tun.present && listens)
      throw std::runtime_error(cfg.file +
                               ": apps listen, but there is no [tun] section to serve them "
                               "(a daemon without [tun] only negotiates for its programs' "
                               "cooperative connections)");
    if (vpm::uses_cooperation(cfg)) {
      std::string warning;
      opt.coop_key = tun::read_coop_key(cfg, &warning);
      if (!warning.empty()) spdlog::warn("{}", warning);
    }
    if (cfg.tun.present && cfg.tun.queues > 1) return run_workers(cfg, opt);
    std::unique_ptr<tun::PacketDevice> made;
    if (cfg.tun.present)
      made = std::make_unique<tun::TunDevice>(cfg.tun);
    else
      made = std::make_unique<tun::NoDevice>();
    tun::PacketDevice& device = *made;
    std::string device_name =
        cfg.tun.present ? static_cast<tun::TunDevice&>(device).name() : std::string("no device");
    tun::Daemon daemon(cfg, device, opt);
    if (!cfg.vpm.control_socket.empty()) daemon.serve_control(cfg.vpm.control_socket);
    if (cfg.metrics.listen) daemon.serve_metrics(*cfg.metrics.listen);
    std::vector<std::string> sockets;
    if (!cfg.vpm.control_socket.empty()) sockets.push_back(cfg.vpm.control_socket);
    if (daemon.instances()) sockets.push_back(daemon.instances()->path());
    settle_privileges(cfg, sockets);
    if (!cfg.tun.present)
      spdlog::info("no [tun]: cooperative client side only");
    else
      spdlog::info("{}", device_line(cfg, device_name));
    spdlog::info("{} listens, {}", daemon.engine().rules().listens().size(),
                 serving_line(cfg, daemon.instances() ? daemon.instances()->path() : ""));
    notify_systemd("READY=1");
    int code = daemon.run();
    notify_systemd("STOPPING=1");
    const auto& c = daemon.engine().counters();
    spdlog::info(
        "stopped: {} packets in, {} out, {} translated, {} dropped, {} refused; "
        "{} removed with the device",
        c.packets[vpm::to_stack_side], c.packets[vpm::to_tun_side], c.translated, c.dropped,
        c.refused, device_name);
    return code;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}

}  // namespace vpmtun
