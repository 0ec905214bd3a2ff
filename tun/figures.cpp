// Gathering a daemon's figures (every counter, per app, per listen, flows
// by state), and summing and carrying those of several workers.
#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include "stack/stack_memory.hpp"
#include "tun/coop.hpp"
#include "tun/daemon.hpp"
#include "tun/hooks.hpp"
#include "tun/instances.hpp"
#include "tun/report.hpp"
#include "vpm/flow_table.hpp"

namespace tun {

namespace {

using Counter = Figures::Counter;

// Half-open TCP, unanswered UDP, waiting for a port (vpm::unconfirmed).
uint64_t unconfirmed_flows(const vpm::FlowTable& flows) {
  uint64_t n = 0;
  flows.for_each([&](const vpm::Flow& f, const vpm::FlowStats&) { n += vpm::unconfirmed(f); });
  return n;
}

// Every counter once, as (group, name, value): one list feeds the text,
// the JSON and the Prometheus forms of `stats`.
std::vector<Counter> counters_of(const Daemon& d) {
  const auto& e = d.engine().counters();
  const auto& s = d.stack().counters();
  std::vector<Counter> list = {
      {"tun", "packets_in", e.packets[vpm::to_stack_side]},
      {"tun", "bytes_in", e.bytes[vpm::to_stack_side]},
      {"tun", "packets_out", e.packets[vpm::to_tun_side]},
      {"tun", "bytes_out", e.bytes[vpm::to_tun_side]},
      {"tun", "write_errors", d.counters().device_write_errors},
      {"tun", "acks_merged", d.acks_merged()},
      {"tun", "queue_drops", d.device().queue_drops()},
      {"engine", "translated", e.translated},
      {"engine", "passed", e.passed},
      {"engine", "dropped", e.dropped},
      {"engine", "refused", e.refused},
      {"engine", "refusals_sent", d.counters().refusals_sent},
      {"engine", "flows", d.engine().flows().size()},
      {"engine", "max_flows", d.engine().flows().max_flows()},
      {"engine", "flows_created", e.flows_created},
      {"engine", "flows_ended", e.flows_ended},
      {"engine", "port_waits", e.port_waits},
      {"engine", "unconfirmed_flows", unconfirmed_flows(d.engine().flows())},
      {"engine", "evicted_table_full", e.evicted_table_full},
      {"engine", "evicted_no_port", e.evicted_no_port},
      {"stack", "packets_in", s.packets_in},
      {"stack", "packets_out", s.packets_out},
      {"stack", "input_errors", s.input_errors},
      {"stack", "lwip_asserts", s.lwip_asserts},
      {"stack", "tcp_accepted", s.tcp_accepted},
      {"stack", "tcp_closed", s.tcp_closed},
      {"stack", "tcp_open", d.stack().open_connections()},
      {"stack", "tcp_half_open", d.stack().half_open()},
      {"stack", "syn_cookies_sent", s.syn_cookies_sent},
      {"stack", "syn_cookies_accepted", s.syn_cookies_accepted},
      {"stack", "memory_bytes", stack::stack_memory().in_use},
      {"stack", "memory_limit_bytes", stack::stack_memory().limit},
      {"stack", "memory_refusals", stack::stack_memory().refused},
      {"stack", "memory_deferrals", s.memory_deferrals},
      {"stack", "udp_datagrams", s.udp_datagrams},
      {"stack", "udp_sessions_expired", s.udp_sessions_expired},
      {"stack", "udp_send_errors", s.udp_send_errors},
      {"stack", "backend_connect_failures", s.backend_connect_failures},
      {"daemon", "reloads", d.counters().reloads},
      {"daemon", "reloads_refused", d.counters().reloads_refused},
      {"daemon", "hooks_run", d.hooks().counters().run},
      {"daemon", "hooks_failed", d.hooks().counters().failed},
      {"daemon", "hooks_timed_out", d.hooks().counters().timed_out},
  };
  const Relays* relays = d.instances()          ? &d.instances()->relays()
                         : d.remote_instances() ? &d.remote_instances()->relays()
                                                : nullptr;
  if (relays) {
    auto more = library_counters(d.instances(), *relays);
    list.insert(list.end(), more.begin(), more.end());
  }
  if (const auto* cs = d.coop_server()) {
    for (size_t o = 0; o < kOutcomes; ++o)
      list.push_back({"cooperative", vpm::coop::outcome_name(static_cast<vpm::coop::Outcome>(o)),
                      cs->outcomes()[o]});
    const auto& w = cs->wire();
    list.insert(list.end(),
                {
                    {"cooperative", "plain_clients", w.plain_clients},
                    {"cooperative", "bad_mac", w.bad_mac},
                    {"cooperative", "expired", w.expired},
                    {"cooperative", "replayed", w.replayed},
                    {"cooperative", "malformed", w.malformed},
                    {"cooperative", "negotiation_connections", s.negotiation_connections},
                    {"cooperative", "negotiation_idle", s.negotiation_idle},
                });
  }
  if (const auto* cc = d.coop_client()) {
    auto more = coop_client_counters(*cc);
    list.insert(list.end(), more.begin(), more.end());
  }
  for (size_t r = 1; r < vpm::kDropCount; ++r)
    list.push_back({"drops", vpm::drop_name(static_cast<vpm::Drop>(r)), e.by_reason[r]});
  return list;
}

// An "i" line (encode), whose command is the rest of `line`.
bool decode_instance(const std::vector<std::string_view>& w, std::string_view line, Figures& f) {
  InstanceInfo i;
  auto num = [&](size_t n, auto& v) {
    auto [p, ec] = std::from_chars(w[n].data(), w[n].data() + w[n].size(), v);
    return ec == std::errc() && p == w[n].data() + w[n].size();
  };
  std::string why;
  auto bound = vpm::Endpoint::parse(w[6], &why);
  auto real = vpm::Endpoint::parse(w[7], &why);
  if (!num(1, i.id) || !num(3, i.pid) || !num(4, i.uid) || !(w[5] == "tcp" || w[5] == "udp") ||
      !bound || !real || !num(8, i.relayed) || !num(9, i.open) || !num(10, i.refusals))
    return false;
  i.app = w[2];
  i.proto = w[5] == "tcp" ? vpm::Proto::tcp : vpm::Proto::udp;
  i.bound = *bound;
  i.real = *real;
  // The command: what follows the eleventh word and its space.
  size_t at = static_cast<size_t>(w[10].data() + w[10].size() - line.data());
  if (at < line.size()) i.command = line.substr(at + 1);
  f.instances.push_back(std::move(i));
  return true;
}

}  // namespace

std::vector<Counter> coop_client_counters(const CoopClient& cc) {
  const auto& c = cc.counters();
  return {
      {"cooperative_client", "dials", c.dials},
      {"cooperative_client", "negotiated", c.negotiated},
      {"cooperative_client", "refused", c.refused},
      {"cooperative_client", "unreachable", c.unreachable},
      {"cooperative_client", "timed_out", c.timed_out},
      {"cooperative_client", "in_flight", cc.in_flight()},
      {"cooperative_client", "links", cc.links()},
      {"cooperative_client", "links_opened", c.links_opened},
  };
}

std::vector<Counter> library_counters(const InstanceRegistry* reg, const Relays& relays) {
  InstanceCounters ic = reg ? reg->counters() : InstanceCounters{};
  return {
      {"library", "instances", reg ? reg->instances().size() : 0},
      {"library", "registered", ic.registered},
      {"library", "refused", ic.refused},
      {"library", "bad_messages", ic.bad_messages},
      {"library", "peers_dropped", ic.peers_dropped},
      {"library", "instance_refusals", relays.refusals()},
  };
}

Figures figures_of(const Daemon& d) {
  Figures f;
  f.uptime_s = (monotonic_ms() - d.started_ms()) / 1000;
  f.counters = counters_of(d);
  const auto& cfg = d.engine().rules().config();
  const auto& engine_apps = d.engine().app_counters();
  const auto& stack_apps = d.stack().app_counters();
  f.apps.resize(cfg.apps.size());
  for (size_t a = 0; a < f.apps.size(); ++a) {
    auto& app = f.apps[a];
    app.flows = engine_apps[a].flows;
    app.port_waits = engine_apps[a].port_waits;
    app.refused = engine_apps[a].refused;
    app.accepted = stack_apps[a].accepted;
    app.open = stack_apps[a].open;
    app.backend_failures = stack_apps[a].backend_failures;
    app.syn_cookies = stack_apps[a].syn_cookies;
    app.backend_up = stack_apps[a].backend_up;
  }
  for (const auto& pool : d.engine().pools()) {
    f.ports_in_use.push_back(pool.in_use());
    f.ports.push_back(pool.capacity());
  }
  for (auto s : {vpm::FlowState::waiting, vpm::FlowState::syn_sent, vpm::FlowState::syn_recv,
                 vpm::FlowState::pickup, vpm::FlowState::established, vpm::FlowState::fin_wait,
                 vpm::FlowState::closed})
    for (const char* p : {"tcp", "udp"}) f.flows_by_state[{p, vpm::flow_state_name(s)}] = 0;
  d.engine().flows().for_each([&](const vpm::Flow& flow, const vpm::FlowStats&) {
    if (flow.state != vpm::FlowState::closed) ++f.apps[flow.app].active;
    ++f.flows_by_state[{flow.key.proto == vpm::ipproto::tcp ? "tcp" : "udp",
                        vpm::flow_state_name(flow.state)}];
  });
  if (d.instances())
    f.instances = d.instances()->instances();
  else if (d.remote_instances())
    f.instances = infos_of(d.remote_instances()->relays());
  return f;
}

bool add(Figures& sum, const Figures& more) {
  if (sum.counters.size() != more.counters.size() || sum.apps.size() != more.apps.size() ||
      sum.ports.size() != more.ports.size() ||
      sum.flows_by_state.size() != more.flows_by_state.size())
    return false;
  sum.uptime_s = std::max(sum.uptime_s, more.uptime_s);
  for (size_t i = 0; i < sum.counters.size(); ++i) {
    if (sum.counters[i].name != more.counters[i].name) return false;
    sum.counters[i].value += more.counters[i].value;
  }
  for (size_t a = 0; a < sum.apps.size(); ++a) {
    auto& x = sum.apps[a];
    const auto& y = more.apps[a];
    x.active += y.active;
    x.flows += y.flows;
    x.port_waits += y.port_waits;
    x.refused += y.refused;
    x.accepted += y.accepted;
    x.open += y.open;
    x.backend_failures += y.backend_failures;
    x.syn_cookies += y.syn_cookies;
    x.backend_up = std::max(x.backend_up, y.backend_up);
  }
  for (size_t i = 0; i < sum.ports.size(); ++i) {
    sum.ports_in_use[i] += more.ports_in_use[i];
    sum.ports[i] += more.ports[i];
  }
  for (auto& [key, n] : sum.flows_by_state) {
    auto it = more.flows_by_state.find(key);
    if (it == more.flows_by_state.end()) return false;
    n += it->second;
  }
  std::unordered_map<uint64_t, size_t> at;  // instance id -> its place in sum.instances
  for (size_t k = 0; k < sum.instances.size(); ++k) at.emplace(sum.instances[k].id, k);
  for (const auto& i : more.instances) {
    auto [it, fresh] = at.try_emplace(i.id, sum.instances.size());
    if (fresh) {
      sum.instances.push_back(i);
      continue;
    }
    sum.instances[it->second].add_counts(i);
  }
  return true;
}

// Lines of words: "u SECONDS", "c GROUP NAME VALUE", "a" and the nine
// figures of an app, "p IN_USE CAPACITY", "s PROTO STATE COUNT", and "i"
// and an instance: id, app, pid, uid, protocol, bound, real, relayed,
// open, refusals and the rest of the line its command (printable: no newline).
std::string encode(const Figures& f) {
  std::string out = fmt::format("u {}\n", f.uptime_s);
  for (auto& c : f.counters) out += fmt::format("c {} {} {}\n", c.group, c.name, c.value);
  for (auto& a : f.apps)
    out += fmt::format("a {} {} {} {} {} {} {} {} {}\n", a.active, a.flows, a.port_waits, a.refused,
                       a.accepted, a.open, a.backend_failures, a.syn_cookies, a.backend_up + 1);
  for (size_t i = 0; i < f.ports.size(); ++i)
    out += fmt::format("p {} {}\n", f.ports_in_use[i], f.ports[i]);
  for (auto& [key, n] : f.flows_by_state)
    out += fmt::format("s {} {} {}\n", key.first, key.second, n);
  for (auto& i : f.instances)
    out += fmt::format("i {} {} {} {} {} {} {} {} {} {} {}\n", i.id, i.app, i.pid, i.uid,
                       vpm::proto_name(i.proto), i.bound.str(), i.real.str(), i.relayed, i.open,
                       i.refusals, i.command);
  return out;
}

std::optional<Figures> decode(std::string_view text) {
  Figures f;
  for (size_t at = 0; at < text.size();) {
    size_t end = std::min(text.find('\n', at), text.size());
    std::vector<std::string_view> words;
    for (size_t w = at; w < end;) {
      size_t space = std::min(text.find(' ', w), end);
      words.push_back(text.substr(w, space - w));
      w = space + 1;
    }
    at = end + 1;
    std::vector<uint64_t> numbers;
    for (auto w : words) {
      uint64_t v = 0;
      auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), v);
      if (ec == std::errc() && p == w.data() + w.size()) numbers.push_back(v);
    }
    if (words.empty()) return std::nullopt;
    std::string_view kind = words[0];
    if (kind == "u" && words.size() == 2 && numbers.size() == 1) {
      f.uptime_s = numbers[0];
    } else if (kind == "c" && words.size() == 4 && !numbers.empty()) {
      f.counters.push_back({std::string(words[1]), std::string(words[2]), numbers.back()});
    } else if (kind == "a" && words.size() == 10 && numbers.size() == 9) {
      f.apps.push_back({numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[5],
                        numbers[6], numbers[7], static_cast<int>(numbers[8]) - 1});
    } else if (kind == "p" && words.size() == 3 && numbers.size() == 2) {
      f.ports_in_use.push_back(numbers[0]);
      f.ports.push_back(numbers[1]);
    } else if (kind == "s" && words.size() == 4 && !numbers.empty()) {
      f.flows_by_state[{std::string(words[1]), std::string(words[2])}] = numbers.back();
    } else if (kind == "i" && words.size() >= 11) {
      if (!decode_instance(words, text.substr(0, end), f)) return std::nullopt;
    } else {
      return std::nullopt;
    }
  }
  return f;
}

}  // namespace tun
