// `vpmtun run`: the daemon in the foreground.
#include "run.hpp"

#include <spdlog/spdlog.h>

#include "tun/daemon.hpp"
#include "tun/device.hpp"

namespace vpmtun {

int run_daemon(const vpm::Config& cfg, const tun::DaemonOptions& opt) {
  try {
    tun::TunDevice device(cfg.tun);
    tun::Daemon daemon(cfg, device, opt);
    std::string addrs;
    if (cfg.tun.address) addrs += " " + cfg.tun.address->str();
    if (cfg.tun.address6) addrs += " " + cfg.tun.address6->str();
    spdlog::info("{} up (mtu {}{}{}), {} listens, {} apps", device.name(), cfg.tun.mtu,
                 cfg.tun.configure ? "," : ", not configured by vpmtun", addrs,
                 daemon.engine().rules().listens().size(), cfg.apps.size());
    int code = daemon.run();
    const auto& c = daemon.engine().counters();
    spdlog::info(
        "stopped: {} packets in, {} out, {} translated, {} dropped, {} refused; "
        "{} removed with the device",
        c.packets[vpm::to_stack_side], c.packets[vpm::to_tun_side], c.translated, c.dropped,
        c.refused, device.name());
    return code;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}

}  // namespace vpmtun
