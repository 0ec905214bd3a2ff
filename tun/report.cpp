// Rendering the daemon's state for `vpmtun stats/table/apps` and Prometheus.
#include "tun/report.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>
#include <vector>

#include "stack/stack_memory.hpp"
#include "tun/coop.hpp"
#include "tun/daemon.hpp"
#include "tun/hooks.hpp"
#include "tun/instances.hpp"
#include "vpm/flow_table.hpp"

namespace tun {

namespace {

// A JSON writer that places the commas: values follow keys or open arrays.
class Json {
 public:
  Json& open(char bracket) {
    separate();
    out_ += bracket;
    first_ = true;
    return *this;
  }
  Json& close(char bracket) {
    out_ += bracket;
    first_ = false;
    return *this;
  }
  Json& key(std::string_view k) {
    separate();
    quote(k);
    out_ += ':';
    first_ = true;  // the value needs no comma
    return *this;
  }
  Json& value(std::string_view v) {
    separate();
    quote(v);
    return *this;
  }
  Json& value(uint64_t v) {
    separate();
    out_ += std::to_string(v);
    return *this;
  }
  Json& value(double v) {
    separate();
    out_ += fmt::format("{:.3f}", v);
    return *this;
  }
  Json& value(const char* v) { return value(std::string_view(v)); }  // not the bool one
  Json& value(bool v) {
    separate();
    out_ += v ? "true" : "false";
    return *this;
  }
  template <typename T>
  Json& field(std::string_view k, T v) {
    return key(k).value(v);
  }
  std::string take() { return std::move(out_) + "\n"; }

 private:
  void separate() {
    if (!first_) out_ += ',';
    first_ = false;
  }
  void quote(std::string_view s) {
    out_ += '"';
    for (char ch : s) {
      auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\')
        (out_ += '\\') += ch;
      else if (c < 0x20)
        out_ += fmt::format("\\u{:04x}", c);
      else
        out_ += ch;
    }
    out_ += '"';
  }
  std::string out_;
  bool first_ = true;
};

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
  if (const auto* reg = d.instances()) {
    const auto& ic = reg->counters();
    list.insert(list.end(), {
                                {"library", "instances", reg->instances().size()},
                                {"library", "registered", ic.registered},
                                {"library", "refused", ic.refused},
                                {"library", "bad_messages", ic.bad_messages},
                                {"library", "peers_dropped", ic.peers_dropped},
                                {"library", "instance_refusals", ic.instance_refusals},
                            });
  }
  if (const auto* cs = d.coop_server()) {
    for (size_t o = 0; o < kOutcomes; ++o)
      list.push_back({"cooperative", vpm::coop::outcome_name(static_cast<vpm::coop::Outcome>(o)),
                      cs->outcomes()[o]});
    const auto& w = cs->wire();
    list.insert(list.end(), {
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
    const auto& c = cc->counters();
    list.insert(list.end(), {
                                {"cooperative_client", "dials", c.dials},
                                {"cooperative_client", "negotiated", c.negotiated},
                                {"cooperative_client", "refused", c.refused},
                                {"cooperative_client", "unreachable", c.unreachable},
                                {"cooperative_client", "timed_out", c.timed_out},
                                {"cooperative_client", "in_flight", cc->in_flight()},
                                {"cooperative_client", "links", cc->links()},
                                {"cooperative_client", "links_opened", c.links_opened},
                            });
  }
  for (size_t r = 1; r < vpm::kDropCount; ++r)
    list.push_back({"drops", vpm::drop_name(static_cast<vpm::Drop>(r)), e.by_reason[r]});
  return list;
}

std::string uptime(uint64_t s) {
  return fmt::format("{}d {:02}:{:02}:{:02}", s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
}

std::string seconds(uint64_t ms) { return fmt::format("{:.1f}", static_cast<double>(ms) / 1000); }

}  // namespace

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
  return true;
}

// Lines of words: "u SECONDS", "c GROUP NAME VALUE", "a" and the nine
// figures of an app, "p IN_USE CAPACITY", "s PROTO STATE COUNT".
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
    } else {
      return std::nullopt;
    }
  }
  return f;
}

std::string render_stats(const Figures& f, bool json) {
  const auto& list = f.counters;
  if (json) {
    Json j;
    j.open('{').field("uptime_s", f.uptime_s);
    std::string_view group;
    for (auto& c : list) {
      if (c.group != group) {
        if (!group.empty()) j.close('}');
        group = c.group;
        j.key(group).open('{');
      }
      j.field(c.name, c.value);
    }
    return j.close('}').close('}').take();
  }
  std::string out = fmt::format("uptime {}\n", uptime(f.uptime_s));
  std::string_view group;
  for (auto& c : list) {
    if (c.group != group) {
      group = c.group;
      out += fmt::format("{}:\n", group);
    }
    if (c.value != 0 || group != "drops") out += fmt::format("  {:<26} {}\n", c.name, c.value);
  }
  return out;
}

std::string render_table(const Daemon& d, const TableFilter& filter, bool json) {
  const auto& cfg = d.engine().rules().config();
  uint64_t now = monotonic_ms();
  Json j;
  j.open('[');
  std::string text =
      fmt::format("{:<5} {:<41} {:<41} {:<12} {:>6} {:>5} {:<11} {:>8} {:>8} {:>17} {:>21}\n",
                  "proto", "client", "virtual", "app", "aid", "p2", "state", "age s", "idle s",
                  "packets in/out", "bytes in/out");
  size_t rows = 0;
  d.engine().flows().for_each([&](const vpm::Flow& f, const vpm::FlowStats& st) {
    const auto& app = cfg.apps[f.app];
    if (!filter.app.empty() && app.name != filter.app) return;
    if (filter.client && !filter.client->contains(f.key.client)) return;
    ++rows;
    const char* proto = f.key.proto == vpm::ipproto::tcp ? "tcp" : "udp";
    std::string client = vpm::Endpoint{f.key.client, f.key.client_port}.str();
    std::string vip = vpm::Endpoint{f.key.vaddr, f.key.p1}.str();
    uint64_t age = now - std::min(now, st.created_ms), idle = now - std::min(now, f.last_ms);
    if (json) {
      j.open('{')
          .field("proto", proto)
          .field("client", client)
          .field("virtual", vip)
          .field("app", app.name)
          .field("aid", uint64_t{app.aid})
          .field("p2", uint64_t{f.p2})
          .field("state", vpm::flow_state_name(f.state))
          .field("age_s", static_cast<double>(age) / 1000)
          .field("idle_s", static_cast<double>(idle) / 1000)
          .field("packets_in", st.packets[0])
          .field("packets_out", st.packets[1])
          .field("bytes_in", st.bytes[0])
          .field("bytes_out", st.bytes[1])
          .close('}');
    } else {
      text += fmt::format(
          "{:<5} {:<41} {:<41} {:<12} {:>6} {:>5} {:<11} {:>8} {:>8} {:>17} {:>21}\n", proto,
          client, vip, app.name, app.aid, f.p2, vpm::flow_state_name(f.state), seconds(age),
          seconds(idle), fmt::format("{}/{}", st.packets[0], st.packets[1]),
          fmt::format("{}/{}", st.bytes[0], st.bytes[1]));
    }
  });
  // Cooperative translations: offered, negotiated and waiting for their
  // connection, or past their window (kept a while to say so).
  size_t coop_rows = 0;
  if (const auto* cs = d.coop_server()) {
    int64_t wall = static_cast<int64_t>(wall_ms());
    for (const auto& e : cs->entries()) {
      const auto& app = cfg.apps[e.app];
      if (!filter.app.empty() && app.name != filter.app) continue;
      if (filter.client && !filter.client->contains(e.client.addr)) continue;
      if (coop_rows++ == 0 && !json)
        text += fmt::format("cooperative translations:\n{:<11} {:<41} {:<41} {:<12} {:>6} {:>5} {:>10}\n",
                            "state", "client", "virtual", "app", "aid", "p2", "until s");
      double until = static_cast<double>(static_cast<int64_t>(e.until_ms) - wall) / 1000;
      if (json)
        j.open('{')
            .field("proto", "tcp")
            .field("cooperative", true)
            .field("client", e.client.str())
            .field("virtual", e.server.str())
            .field("app", app.name)
            .field("aid", uint64_t{e.aid})
            .field("p2", uint64_t{e.p2})
            .field("state", e.state)
            .field("until_s", until)
            .close('}');
      else
        text += fmt::format("{:<11} {:<41} {:<41} {:<12} {:>6} {:>5} {:>10.1f}\n", e.state,
                            e.client.str(), e.server.str(), app.name, e.aid, e.p2, until);
    }
  }
  if (json) return j.close(']').take();
  std::string coop = d.coop_server() ? fmt::format(", {} cooperative translation{}", coop_rows,
                                                   coop_rows == 1 ? "" : "s")
                                     : "";
  return text + fmt::format("{} flow{}{}\n", rows, rows == 1 ? "" : "s", coop);
}

// JSON: arrays, whose elements are joined. Text: a header line, the rows,
// and a last line that starts with the number of flows.
std::string join_tables(const std::vector<std::string>& parts, bool json) {
  std::string out;
  uint64_t flows = 0;
  for (const auto& part : parts) {
    std::string_view p = part;
    while (!p.empty() && p.back() == '\n') p.remove_suffix(1);
    if (json) {
      if (p.size() < 2) continue;
      std::string_view inner = p.substr(1, p.size() - 2);
      if (!inner.empty()) out += (out.empty() ? "" : ",") + std::string(inner);
      continue;
    }
    size_t header_end = p.find('\n');
    size_t last = p.rfind('\n');
    if (header_end == std::string_view::npos) continue;
    if (out.empty()) out = p.substr(0, header_end + 1);
    if (last > header_end) out += p.substr(header_end + 1, last - header_end);
    uint64_t n = 0;
    std::string_view tail = p.substr(last + 1);
    std::from_chars(tail.data(), tail.data() + tail.size(), n);
    flows += n;
  }
  if (json) return "[" + out + "]\n";
  return out + fmt::format("{} flow{}\n", flows, flows == 1 ? "" : "s");
}

std::string render_apps(const Daemon& d, const Figures& f, bool json) {
  const auto& cfg = d.engine().rules().config();
  const auto& rules = d.engine().rules();
  std::vector<InstanceInfo> instances;
  if (d.instances()) instances = d.instances()->instances();
  Json j;
  j.open('[');
  std::string text;
  for (size_t a = 0; a < cfg.apps.size(); ++a) {
    const auto& app = cfg.apps[a];
    const auto& fig = f.apps.at(a);
    std::vector<std::string> listens, p2s;
    for (size_t li = 0; li < rules.listens().size(); ++li) {
      const auto& l = rules.listens()[li];
      uint16_t p2 = l.p2_of_app[a];
      bool here = false;
      for (auto& s : app.listen)
        here |= s.at.addr == l.vaddr && s.at.port == l.p1 && s.proto == l.proto;
      if (!here) continue;
      listens.push_back(
          fmt::format("{}/{}", vpm::Endpoint{l.vaddr, l.p1}.str(), vpm::proto_name(l.proto)));
      if (cfg.vpm.allocation == vpm::Allocation::per_app)
        p2s.push_back(std::to_string(p2));
      else
        p2s.push_back(
            fmt::format("{}-{} ({} in use)", l.slice_lo, l.slice_hi, f.ports_in_use.at(li)));
    }
    std::string service = app.forward ? "forward " + app.forward->str() : app.serve;
    const char* health = !app.forward          ? "-"
                         : fig.backend_up == 1 ? "up"
                         : fig.backend_up == 0 ? "down"
                                               : "unknown";
    if (json) {
      j.open('{')
          .field("name", app.name)
          .field("aid", uint64_t{app.aid})
          .field("draining", app.draining)
          .key("listens")
          .open('[');
      for (auto& l : listens) j.value(l);
      j.close(']').key("p2s").open('[');
      for (auto& p : p2s) j.value(p);
      j.close(']').field("service", app.serve.empty() ? "forward" : app.serve);
      if (app.forward) j.field("backend", app.forward->str()).field("backend_health", health);
      j.field("active", fig.active)
          .field("total", fig.flows)
          .field("tcp_accepted", fig.accepted)
          .field("tcp_open", fig.open)
          .field("backend_failures", fig.backend_failures)
          .field("syn_cookies", fig.syn_cookies)
          .field("port_waits", fig.port_waits)
          .field("refused", fig.refused);
      if (app.serve == "exec") {
        j.key("instances").open('[');
        for (auto& i : instances) {
          if (i.app != app.name) continue;
          j.open('{')
              .field("pid", uint64_t(i.pid))
              .field("uid", uint64_t{i.uid})
              .field("command", i.command)
              .field("protocol", vpm::proto_name(i.proto))
              .field("bound", i.bound.str())
              .field("real", i.real.str())
              .field("relayed", i.relayed)
              .field("open", i.open)
              .field("refusals", i.refusals)
              .close('}');
        }
        j.close(']');
      }
      j.close('}');
    } else {
      std::string joined_listens, joined_p2s;
      for (size_t i = 0; i < listens.size(); ++i) {
        joined_listens += (i ? ", " : "") + listens[i];
        joined_p2s += (i ? ", " : "") + p2s[i];
      }
      text += fmt::format(
          "{} (aid {}{}): {}{}\n", app.name, app.aid, app.draining ? ", draining" : "", service,
          app.forward ? fmt::format(" [{}; {} failures]", health, fig.backend_failures) : "");
      text += fmt::format("  listens  {}\n  p2s      {}\n", joined_listens, joined_p2s);
      text += fmt::format(
          "  flows    {} active, {} total; tcp {} open, {} accepted; {} port waits, {} refused\n",
          fig.active, fig.flows, fig.open, fig.accepted, fig.port_waits, fig.refused);
      if (fig.syn_cookies)
        text += fmt::format(
            "  handshakes past the bound of pending ones: {} completed with SYN cookies\n",
            fig.syn_cookies);
      if (app.serve == "exec") {
        size_t n = 0;
        for (auto& i : instances) {
          if (i.app != app.name) continue;
          text += fmt::format(
              "  instance pid {} uid {}: {}/{} -> real {}; {} relayed, {} open, {} refused  {}\n",
              i.pid, i.uid, i.bound.str(), vpm::proto_name(i.proto), i.real.str(), i.relayed,
              i.open, i.refusals, i.command);
          ++n;
        }
        if (n == 0) text += "  no instance registered: its clients are refused\n";
      }
    }
  }
  return json ? j.close(']').take() : text;
}

std::string render_metrics(const Daemon& d, const Figures& f) {
  std::string out;
  auto family = [&](std::string_view name, const char* type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  // Counters keep their stats names: vpmtun_<group>_<name>, with drops as
  // one family labelled by reason.
  bool drops_started = false;
  for (auto& c : f.counters) {
    if (c.group == "drops") {
      if (!drops_started) {
        family("vpmtun_drops_total", "counter", "Packets the engine dropped or refused, by reason");
        drops_started = true;
      }
      out += fmt::format("vpmtun_drops_total{{reason=\"{}\"}} {}\n", c.name, c.value);
      continue;
    }
    std::string_view n = c.name;
    bool gauge = n == "flows" || n == "max_flows" || n == "tcp_open" || n == "instances" ||
                 n == "in_flight" || n == "links" || n == "workers";
    std::string name = fmt::format("vpmtun_{}_{}{}", c.group, c.name, gauge ? "" : "_total");
    family(name, gauge ? "gauge" : "counter", fmt::format("vpmtun stats: {} {}", c.group, c.name));
    out += fmt::format("{} {}\n", name, c.value);
  }
  // Flows by state and protocol.
  family("vpmtun_flows", "gauge", "Flows in the table by protocol and state");
  for (auto& [k, n] : f.flows_by_state)
    out += fmt::format("vpmtun_flows{{proto=\"{}\",state=\"{}\"}} {}\n", k.first, k.second, n);
  // Hidden ports in use per virtual port (per-connection allocation), and
  // per app. Each family's samples stay together, as the format requires.
  const auto& rules = d.engine().rules();
  auto per_listen = [&](std::string_view name, std::string_view help,
                        const std::vector<uint64_t>& values) {
    if (values.empty()) return;
    family(name, "gauge", help);
    for (size_t li = 0; li < values.size(); ++li) {
      const auto& l = rules.listens()[li];
      out += fmt::format("{}{{vaddr=\"{}\",p1=\"{}\",proto=\"{}\"}} {}\n", name, l.vaddr.str(),
                         l.p1, vpm::proto_name(l.proto), values[li]);
    }
  };
  per_listen("vpmtun_port_pool_used", "Hidden ports (p2) in use per virtual address and p1",
             f.ports_in_use);
  per_listen("vpmtun_port_pool_size", "Hidden ports (p2) per virtual address and p1", f.ports);
  const auto& cfg = rules.config();
  auto per_app = [&](std::string_view name, const char* type, std::string_view help, auto value) {
    family(name, type, help);
    for (size_t a = 0; a < cfg.apps.size(); ++a)
      out += fmt::format("{}{{app=\"{}\",aid=\"{}\",draining=\"{}\"}} {}\n", name, cfg.apps[a].name,
                         cfg.apps[a].aid, cfg.apps[a].draining, value(a));
  };
  per_app("vpmtun_app_flows_total", "counter", "Flows created per app",
          [&](size_t a) { return f.apps[a].flows; });
  per_app("vpmtun_app_tcp_open", "gauge", "TCP connections open per app",
          [&](size_t a) { return f.apps[a].open; });
  per_app("vpmtun_app_syn_cookies_total", "counter",
          "Connections per app that completed a SYN cookie handshake (too many were pending)",
          [&](size_t a) { return f.apps[a].syn_cookies; });
  per_app("vpmtun_app_backend_failures_total", "counter", "Backend connects that failed per app",
          [&](size_t a) { return f.apps[a].backend_failures; });
  if (d.instances()) {
    auto instances = d.instances()->instances();
    per_app("vpmtun_app_instances", "gauge",
            "Sockets registered by programs under vpmtun exec per app (serve = \"exec\")",
            [&](size_t a) {
              return std::count_if(instances.begin(), instances.end(), [&](const InstanceInfo& i) {
                return i.app == cfg.apps[a].name;
              });
            });
  }
  family("vpmtun_uptime_seconds", "gauge", "Seconds since the daemon started");
  out += fmt::format("vpmtun_uptime_seconds {}\n", f.uptime_s);
  return out;
}

}  // namespace tun
