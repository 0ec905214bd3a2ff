// Rendering the daemon's state for `vpmtun stats/table/apps` and Prometheus.
#include "tun/report.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>
#include <vector>

#include "tun/coop.hpp"
#include "tun/daemon.hpp"
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

std::string uptime(uint64_t s) {
  return fmt::format("{}d {:02}:{:02}:{:02}", s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
}

std::string seconds(uint64_t ms) { return fmt::format("{:.1f}", static_cast<double>(ms) / 1000); }

}  // namespace

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
        text += fmt::format(
            "cooperative translations:\n{:<11} {:<41} {:<41} {:<12} {:>6} {:>5} {:>10}\n", "state",
            "client", "virtual", "app", "aid", "p2", "until s");
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
  const auto& instances = f.instances;
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
  if (std::any_of(cfg.apps.begin(), cfg.apps.end(), vpm::runs_programs))
    per_app("vpmtun_app_instances", "gauge",
            "Sockets registered by programs under vpmtun exec per app (serve = \"exec\")",
            [&](size_t a) {
              return std::count_if(
                  f.instances.begin(), f.instances.end(),
                  [&](const InstanceInfo& i) { return i.app == cfg.apps[a].name; });
            });
  family("vpmtun_uptime_seconds", "gauge", "Seconds since the daemon started");
  out += fmt::format("vpmtun_uptime_seconds {}\n", f.uptime_s);
  return out;
}

}  // namespace tun
