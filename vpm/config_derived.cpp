// What follows from a parsed configuration: which apps run programs, whether
// it cooperates, how many workers "auto" means, the library socket's path,
// and which names a node may have.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "vpm/config.hpp"

namespace vpm {

bool runs_programs(const AppConfig& app) { return app.serve == "exec" || !app.remote.empty(); }

bool uses_cooperation(const Config& cfg) {
  return std::any_of(cfg.apps.begin(), cfg.apps.end(),
                     [](const AppConfig& a) { return a.cooperative || !a.remote.empty(); });
}

uint32_t auto_queues(const Config& cfg, unsigned cores) {
  size_t n = std::clamp<size_t>(cores, 1, kMaxQueues);
  if (cfg.vpm.allocation == Allocation::per_connection) {
    size_t range = size_t{cfg.vpm.range_hi} - cfg.vpm.range_lo + 1;
    std::map<IpAddr, std::set<uint16_t>> p1s;
    for (auto& app : cfg.apps)
      for (auto& l : app.listen) p1s[l.at.addr].insert(l.at.port);
    for (auto& [addr, ports] : p1s) n = std::min(n, std::max<size_t>(1, range / ports.size()));
  }
  return static_cast<uint32_t>(n);
}

std::string app_socket_path(const VpmConfig& vpm) {
  if (!vpm.app_socket.empty()) return vpm.app_socket;
  std::string_view base = vpm.control_socket;
  if (base.ends_with(".sock")) base.remove_suffix(5);
  return std::string(base) + "-app.sock";
}

bool name_ok(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_';
  });
}

}  // namespace vpm
