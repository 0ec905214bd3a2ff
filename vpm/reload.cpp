// Merging a new configuration file into the running one.
#include "vpm/reload.hpp"

#include <algorithm>
#include <set>

#include "vpm/rules.hpp"

namespace vpm {

namespace {

template <typename T>
std::string shown(const std::optional<T>& v) {
  return v ? v->str() : "none";
}

// In any order.
std::set<std::string> listens_of(const AppConfig& a) {
  std::set<std::string> out;
  for (auto& l : a.listen) out.insert(l.at.str() + "/" + proto_name(l.proto));
  return out;
}

// Everything but the client rules: flows of one can go on with the other.
bool same_app(const AppConfig& a, const AppConfig& b) {
  return a.name == b.name && a.aid == b.aid && listens_of(a) == listens_of(b) &&
         a.serve == b.serve && a.forward == b.forward && a.proxy_protocol_v2 == b.proxy_protocol_v2;
}

bool same_clients(const AppConfig& a, const AppConfig& b) {
  if (a.clients.size() != b.clients.size()) return false;
  for (size_t i = 0; i < a.clients.size(); ++i)
    if (a.clients[i].str() != b.clients[i].str()) return false;
  return true;
}

std::set<std::string> listened_ports(const Config& cfg) {
  std::set<std::string> out;
  for (auto& a : cfg.apps)
    for (auto& l : a.listen) out.insert(l.at.str());
  return out;
}

}  // namespace

std::vector<ConfigError> reload_errors(const Config& running, const Config& next) {
  std::vector<ConfigError> errors;
  auto fixed = [&](const char* key, const std::string& was, const std::string& now) {
    if (was == now) return;
    auto line = next.lines.find(key);
    errors.push_back({next.file, line == next.lines.end() ? 0 : line->second, key,
                      "cannot change while vpmtun runs (" + was + " -> " + now +
                          "); restart vpmtun to apply it"});
  };
  auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
  const Config &a = running, &b = next;
  fixed("tun.name", a.tun.name, b.tun.name);
  fixed("tun.mtu", std::to_string(a.tun.mtu), std::to_string(b.tun.mtu));
  fixed("tun.address", shown(a.tun.address), shown(b.tun.address));
  fixed("tun.address6", shown(a.tun.address6), shown(b.tun.address6));
  fixed("tun.configure", flag(a.tun.configure), flag(b.tun.configure));
  fixed("tun.offload", flag(a.tun.offload), flag(b.tun.offload));
  auto queues = [](const TunConfig& t) {
    return t.queues_auto ? "\"auto\" (" + std::to_string(t.queues) + ")" : std::to_string(t.queues);
  };
  fixed("tun.queues", queues(a.tun), queues(b.tun));
  auto range = [](const VpmConfig& v) {
    return std::to_string(v.range_lo) + "-" + std::to_string(v.range_hi);
  };
  auto mode = [](const VpmConfig& v) {
    return std::string(v.allocation == Allocation::per_app ? "per-app" : "per-connection");
  };
  fixed("vpm.port_range", range(a.vpm), range(b.vpm));
  fixed("vpm.allocation", mode(a.vpm), mode(b.vpm));
  fixed("vpm.control_socket", a.vpm.control_socket, b.vpm.control_socket);
  // The library socket exists while an app is run by programs (serve =
  // "exec", or remote): its path, and whether there is one, are set at start.
  auto exec_socket = [](const Config& c) {
    bool any = std::any_of(c.apps.begin(), c.apps.end(), runs_programs);
    return any ? app_socket_path(c.vpm)
               : std::string("none (no app has serve = \"exec\" or remote)");
  };
  fixed("vpm.app_socket", exec_socket(a), exec_socket(b));
  // The cooperative key is read at start, and only when something cooperates.
  auto key = [](const Config& c) {
    return uses_cooperation(c) ? c.cooperative.key_file : std::string("none (nothing cooperates)");
  };
  fixed("cooperative.key_file", key(a), key(b));
  fixed("vpm.max_flows", std::to_string(a.vpm.max_flows), std::to_string(b.vpm.max_flows));
  fixed("metrics.listen", shown(a.metrics.listen), shown(b.metrics.listen));
  fixed("daemon.user", a.daemon.user, b.daemon.user);
  // Per-connection slices are cut by the p1s of each address: another set
  // would move ports that flows hold under other p1s.
  if (errors.empty() && b.vpm.allocation == Allocation::per_connection) {
    std::set<std::string> was = listened_ports(a), now = listened_ports(b);
    for (size_t i = 0; i < b.apps.size(); ++i)
      for (auto& l : b.apps[i].listen)
        if (!was.count(l.at.str()))
          errors.push_back({b.file, b.apps[i].line, "app[" + std::to_string(i) + "].listen",
                            l.at.str() + " is new: with allocation = \"per-connection\" the "
                                         "listened ports cannot change while vpmtun runs; "
                                         "restart vpmtun to apply it"});
    for (auto& p : was)
      if (!now.count(p))
        errors.push_back({b.file, 0, "app",
                          p + " is no longer listened on: with allocation = \"per-connection\" "
                              "the listened ports cannot change while vpmtun runs; restart "
                              "vpmtun to apply it"});
  }
  return errors;
}

Reload merge_reload(const Config& running, const Config& next,
                    const std::vector<size_t>& flows_of_app) {
  Reload r;
  r.config = next;
  r.app_of.assign(running.apps.size(), kNoApp);
  std::vector<std::string> said;
  std::set<std::string> had;  // names of the running apps that are not draining
  for (auto& a : running.apps)
    if (!a.draining) had.insert(a.name);
  for (auto& a : next.apps)
    if (!had.count(a.name)) said.push_back("added " + a.name);

  std::vector<bool> matched(next.apps.size(), false);
  for (size_t i = 0; i < running.apps.size(); ++i) {
    const AppConfig& old = running.apps[i];
    size_t flows = i < flows_of_app.size() ? flows_of_app[i] : 0;
    for (size_t j = 0; j < next.apps.size() && r.app_of[i] == kNoApp; ++j) {
      if (matched[j] || !same_app(old, next.apps[j])) continue;
      matched[j] = true;
      r.app_of[i] = static_cast<uint16_t>(j);
      if (old.draining)
        said.push_back(old.name + " is back, with the flows it was draining");
      else if (!same_clients(old, next.apps[j]))
        said.push_back("new client rules for " + old.name);
    }
    if (r.app_of[i] != kNoApp) continue;
    bool renewed = false;  // the new file has an app of that name, with another service
    for (auto& a : next.apps) renewed |= a.name == old.name;
    if (flows > 0) {
      r.app_of[i] = static_cast<uint16_t>(r.config.apps.size());
      r.config.apps.push_back(old);
      r.config.apps.back().clients.clear();
      r.config.apps.back().draining = true;
    }
    std::string left =
        flows > 0 ? " (draining " + std::to_string(flows) + (flows == 1 ? " flow)" : " flows)")
                  : "";
    if (old.draining && flows == 0)
      said.push_back("the old " + old.name + " has drained");
    else if (!old.draining)
      said.push_back((renewed ? "changed " : "removed ") + old.name + left);
  }
  if (running.vpm.unmatched != next.vpm.unmatched)
    said.push_back("unmatched: " + running.vpm.unmatched + " -> " + next.vpm.unmatched);
  if (running.timeouts != next.timeouts ||
      running.vpm.queue_timeout_ms != next.vpm.queue_timeout_ms)
    said.push_back("new timeouts");
  for (auto& s : said) r.summary += (r.summary.empty() ? "" : "; ") + s;
  if (r.summary.empty()) r.summary = "nothing changed";
  return r;
}

}  // namespace vpm
