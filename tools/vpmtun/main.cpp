// The vpmtun command: verbs, options and help.
#include <fmt/core.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <set>

#include "config_file.hpp"
#include "exec.hpp"
#include "replay.hpp"
#include "run.hpp"
#include "tun/control.hpp"
#include "tun/metrics.hpp"
#include "vpm/rules.hpp"

#ifndef VPMTUN_VERSION
#define VPMTUN_VERSION "0.0.0"
#endif

namespace {

// %j in a log pattern: the message as the inside of a JSON string.
class JsonMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    for (char ch : std::string_view(msg.payload.data(), msg.payload.size())) {
      auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        dest.push_back('\\');
        dest.push_back(ch);
      } else if (c < 0x20) {
        fmt::format_to(std::back_inserter(dest), "\\u{:04x}", c);
      } else {
        dest.push_back(ch);
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessage>();
  }
};

// --log-format json: one object per line, for log shippers.
void log_as_json() {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<JsonMessage>('j').set_pattern(
      R"({"time":"%Y-%m-%dT%H:%M:%S.%f%z","level":"%l","pid":%P,"msg":"%j"})");
  spdlog::set_formatter(std::move(f));
}

// `vpmtun check`: what the configuration means, so a user can see the p2s.
void describe_config(const vpm::Config& cfg) {
  vpm::Ruleset rules(cfg);
  fmt::print("{}: OK ({} app{}, {} listen{}, allocation {}, hidden ports {}-{})\n", cfg.file,
             cfg.apps.size(), cfg.apps.size() == 1 ? "" : "s", rules.listens().size(),
             rules.listens().size() == 1 ? "" : "s",
             cfg.vpm.allocation == vpm::Allocation::per_app ? "per-app" : "per-connection",
             cfg.vpm.range_lo, cfg.vpm.range_hi);
  for (auto& l : rules.listens()) {
    fmt::print("  {}/{}\n", vpm::Endpoint{l.vaddr, l.p1}.str(), vpm::proto_name(l.proto));
    for (size_t a = 0; a < cfg.apps.size(); ++a) {
      bool listens_here = false;
      for (auto& s : cfg.apps[a].listen)
        listens_here |= s.at.addr == l.vaddr && s.at.port == l.p1 && s.proto == l.proto;
      if (!listens_here) continue;
      std::string rules_text;
      for (auto& r : cfg.apps[a].clients) rules_text += (rules_text.empty() ? "" : ", ") + r.str();
      if (l.fallback_app == a)
        rules_text += rules_text.empty() ? "unmatched clients" : ", unmatched clients";
      std::string p2 = cfg.vpm.allocation == vpm::Allocation::per_app
                           ? fmt::format("p2 {}", l.p2_of_app[a])
                           : fmt::format("p2 {}-{} per connection", l.slice_lo, l.slice_hi);
      if (cfg.apps[a].cooperative) p2 += ", cooperative";
      fmt::print("    app {:<12} aid {:<6} {:<26} clients: {}\n", cfg.apps[a].name, cfg.apps[a].aid,
                 p2, rules_text.empty() ? "(none)" : rules_text);
    }
  }
  for (const auto& app : cfg.apps) {
    if (app.remote.empty()) continue;
    std::string servers;
    for (const auto& r : app.remote) servers += (servers.empty() ? "" : ", ") + r.str();
    fmt::print("  app {} (aid {}) reaches cooperatively: {}\n", app.name, app.aid, servers);
  }
  if (!cfg.tun.present)
    fmt::print("  no [tun]: `vpmtun run` serves only the client side of cooperative mode\n");
  std::string hooks;
  for (auto [key, cmd] : {std::pair{"on_ready", &cfg.daemon.on_ready},
                          {"on_drain", &cfg.daemon.on_drain},
                          {"on_stop", &cfg.daemon.on_stop}})
    if (!cmd->empty()) hooks += std::string(" ") + key;
  if (!hooks.empty())
    fmt::print("  node {}, hooks:{} (each killed after {} ms)\n", cfg.daemon.name, hooks,
               cfg.daemon.hook_timeout_ms);
  if (cfg.tun.queues > 1)
    fmt::print(
        "  {} workers{}, one per TUN queue, each with 1/{} of max_flows, stack_memory_mb and "
        "pending handshakes{}\n",
        cfg.tun.queues, cfg.tun.queues_auto ? " (queues = \"auto\": one per core)" : "",
        cfg.tun.queues,
        vpm::uses_cooperation(cfg) ? "; queues by client address (cooperative mode)" : "");
  else if (cfg.tun.present && cfg.tun.queues_auto)
    fmt::print(
        "  one worker (queues = \"auto\": one core, or a per-connection slice too small for "
        "more)\n");
}

// A question for the running daemon over its control socket: the answer
// goes to stdout (or stderr when the daemon says the request was wrong).
int ask(const std::string& socket, const std::string& config_path, const std::string& request) {
  std::string path = socket;
  if (path.empty() && !config_path.empty()) {
    auto cfg = vpmtun::load_config(config_path, "the daemon was not asked");
    if (!cfg) return 1;
    path = cfg->vpm.control_socket;
  }
  if (path.empty()) path = vpm::VpmConfig{}.control_socket;
  try {
    auto [ok, body] = tun::ask_daemon(path, request);
    fmt::print(ok ? stdout : stderr, "{}", ok ? body : "vpmtun: " + body);
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "vpmtun: {}\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_st("vpmtun"));
  spdlog::set_pattern("%n: %^%l%$: %v");  // a worker is named "vpmtun worker N"
  CLI::App app{
      "vpmtun - a virtual port multiplexer over a Linux TUN device.\n\n"
      "Many application instances share one port (p1, say 9000) on a virtual address;\n"
      "vpmtun gives each its own hidden port (p2) and rewrites TCP/UDP ports and\n"
      "checksums so that clients and applications only ever see p1.\n"};
  app.set_version_flag("--version", VPMTUN_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  vpmtun run -c vpm.toml                         the daemon, in the foreground\n"
      "  vpmtun check -c vpm.toml                       validate a configuration, show the p2s\n"
      "  vpmtun replay in.pcap -c vpm.toml -o out.pcap  TUN-side capture -> stack-side view\n"
      "  vpmtun replay out.pcap -c vpm.toml -o back.pcap --reverse\n"
      "  vpmtun table --app blue                        a running daemon's flows, like conntrack "
      "-L\n"
      "  vpmtun stats --json                            every counter, for programs\n"
      "  vpmtun reload                                  a running daemon takes its edited file\n"
      "\nRun 'vpmtun VERB --help' for the options of a verb.");

  std::string config_path;
  auto* check =
      app.add_subcommand("check", "Validate a configuration file without starting anything");
  check->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  check->footer(
      "Prints every error as FILE:LINE: KEY: message and exits 1, or prints what the\n"
      "configuration means (listens, apps, their hidden ports) and exits 0.\n\n"
      "Example:\n  vpmtun check -c /etc/vpmtun/vpm.toml");

  tun::DaemonOptions dopt;
  std::string log_level = "info", log_format = "text";
  auto* run = app.add_subcommand("run", "Run the daemon in the foreground (needs CAP_NET_ADMIN)");
  run->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  run->add_option("--capture-tun", dopt.capture_tun,
                  "Write a pcap of the TUN side (what clients see)");
  run->add_option("--capture-stack", dopt.capture_stack,
                  "Write a pcap of the stack side (what the endpoints see)");
  run->add_option("--drain", dopt.drain_ms,
                  "Milliseconds SIGTERM lets open connections finish before resetting them")
      ->default_val(5000);
  run->add_option("--log-level", log_level,
                  "debug (each connection opened and closed), info (refusals and drops, at most "
                  "10 a second), warning, error")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
      ->default_val("info");
  run->add_option("--log-format", log_format, "text, or json: one object per line for log shippers")
      ->check(CLI::IsMember({"text", "json"}))
      ->default_val("text");
  run->footer(
      "Creates the TUN from [tun] (name, MTU, addresses; the kernel routes their prefixes\n"
      "through it) and serves every [[app]] on its virtual addresses: built-in services,\n"
      "or forward = \"host:port\" to a real backend (TCP and UDP; the client's SYN is only\n"
      "answered once the backend has accepted, else it gets a RST). Clients no app claims\n"
      "get a TCP RST or ICMP port unreachable (unmatched = \"reset\").\n"
      "SIGTERM or SIGINT drains: [daemon] on_drain runs first (withdraw the node from\n"
      "the routers), then new connections are refused, open ones get --drain ms, then\n"
      "on_stop runs and the TUN, its addresses and routes go away. A second signal\n"
      "stops at once. on_ready runs once it serves; each hook is a sh -c command line\n"
      "with VPMTUN_STATE, VPMTUN_NAME, VPMTUN_PREFIXES in its environment.\n"
      "Operating it: 'vpmtun stats', 'table' and 'apps' ask it over [vpm] control_socket;\n"
      "[metrics] listen serves Prometheus text at /metrics; with [daemon] user it drops\n"
      "all privileges once the TUN and sockets are set up. SIGHUP or 'vpmtun reload'\n"
      "re-reads the file: new rules for new flows, open flows keep theirs.\n"
      "With [tun] queues = N (N > 1) the TUN has N queues and one worker process\n"
      "serves each (its own engine and embedded stack; the kernel keeps each flow on\n"
      "one queue); this process supervises them and answers for all of them. Signal\n"
      "this process, not a worker. The default, queues = \"auto\", is one per core.\n"
      "Programs under vpmtun exec register with this process, once for every worker.\n"
      "Workers write their packets to the same capture files, 50 ms at a time\n"
      "(reordercap sorts). In cooperative mode the kernel picks a client's worker by\n"
      "its address, so its negotiation and its connection meet in one worker.\n\n"
      "Examples:\n"
      "  vpmtun run -c /etc/vpmtun/vpm.toml\n"
      "  vpmtun run -c vpm.toml --log-level debug --log-format json\n"
      "  vpmtun run -c vpm.toml --capture-tun tun.pcap --capture-stack stack.pcap");

  vpmtun::ReplayOptions ropt;
  auto* rep =
      app.add_subcommand("replay", "Translate a capture file offline with the daemon's engine");
  rep->add_option("input", ropt.input, "Capture to read (pcap or pcapng); - reads standard input")
      ->required()
      ->check(CLI::Validator(
          [](std::string& path) { return path == "-" ? std::string() : CLI::ExistingFile(path); },
          "FILE or -"));
  rep->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  rep->add_option("-o,--output", ropt.output,
                  "Capture to write (pcap, same link type); - writes standard output")
      ->required();
  rep->add_flag("-r,--reverse", ropt.reverse,
                "Input is a stack-side capture (p2); map it back to the TUN side (p1)");
  rep->add_flag("-p,--print", ropt.print,
                "Print one line per packet: what it was and what it became");
  rep->add_flag("-q,--quiet", ropt.quiet, "No summary and no per-packet warnings");
  rep->footer(
      "A TUN-side capture is what clients send and receive (port p1); the stack side\n"
      "is what the virtual endpoints see (port p2). Without --reverse the input is the\n"
      "TUN side; with it, the stack side. Replaying forward and then back gives the\n"
      "original file byte for byte. Packets the engine drops or refuses are left out\n"
      "of the output and counted by reason in the summary; flows expire on the\n"
      "capture's own clock. Reads raw IP, Ethernet, Linux cooked and loopback captures.\n\n"
      "Examples:\n"
      "  vpmtun replay pcaps/tcp-http.pcap -c pcaps/demo.toml -o /tmp/stack.pcap -p\n"
      "  vpmtun replay /tmp/stack.pcap -c pcaps/demo.toml -o /tmp/tun.pcap --reverse\n"
      "  tcpdump -U -w - -i eth0 port 9000 | vpmtun replay - -c vpm.toml -o - | tshark -r -\n"
      "With -o - the summary goes to standard error.");

  // Verbs that ask a running daemon over its control socket.
  std::string socket;
  bool json = false;
  std::string filter_app, filter_client;
  auto asking = [&](const char* name, const char* what, const char* about,
                    bool answers_json = true) {
    auto* verb = app.add_subcommand(name, what);
    verb->add_option("-s,--socket", socket,
                     "The daemon's control socket (default: [vpm] control_socket of -c, or "
                     "/run/vpmtun.sock)");
    verb->add_option("-c,--config", config_path, "Take the socket path from this configuration");
    if (answers_json) verb->add_flag("--json", json, "Answer in JSON, for programs");
    verb->footer(about);
    return verb;
  };
  auto* stats = asking(
      "stats", "Every counter of a running daemon",
      "Packets and bytes each way through the TUN, translated, passed, dropped and\n"
      "refused (by reason: unmatched clients, port waits and their timeouts, a full\n"
      "flow table, ...), flows, lwIP errors and assertions, backend connect failures.\n"
      "The socket is mode 0600: run it as the daemon's user or root.\n\n"
      "Examples:\n  vpmtun stats\n  vpmtun stats -c /etc/vpmtun/vpm.toml --json | jq .drops");
  auto* table =
      asking("table", "The flows of a running daemon, one per line (like conntrack -L)",
             "Each flow: protocol, client address:port, virtual address:p1, app and AID, the\n"
             "hidden port p2, state, age and idle seconds, packets and bytes each way\n"
             "(in = from the client).\n\n"
             "Examples:\n  vpmtun table\n  vpmtun table --app blue --client 10.200.1.0/24\n"
             "  vpmtun table --json | jq '.[] | select(.state == \"established\")'");
  table->add_option("--app", filter_app, "Only the flows of this app");
  table->add_option("--client", filter_client,
                    "Only clients in this prefix (10.200.1.0/24, fd00::/64, or one address)");
  auto* apps = asking("apps", "The apps of a running daemon and how they are doing",
                      "Per app: its listens and hidden ports (p2), its service or backend and the\n"
                      "backend's health (up/down by the last connect), active and total flows,\n"
                      "TCP connections open and accepted, allocation waits and refusals.\n\n"
                      "Examples:\n  vpmtun apps\n  vpmtun apps --json");

  auto* reload =
      asking("reload", "Make a running daemon re-read its configuration file (like SIGHUP)",
             "The daemon reads the file it was started with again and checks it first: with\n"
             "an error, or a change that needs a restart (anything in [tun], [metrics] or\n"
             "[daemon]; port_range, allocation, control_socket, max_flows; with per-\n"
             "connection allocation also the listened ports), it keeps its rules, and\n"
             "this prints the errors (FILE:LINE: KEY: message) and exits 1.\n"
             "Otherwise new flows follow the new rules at once and this prints what changed.\n"
             "Flows already open keep their app, hidden port and backend until they end;\n"
             "an app that was removed (or whose listens or service changed) drains: it\n"
             "serves its open flows and takes no new ones. Apps that stay keep their p2s.\n\n"
             "Examples:\n  vpmtun reload\n  vpmtun reload -c /etc/vpmtun/vpm.toml\n"
             "  systemctl reload vpmtun            (the installed unit runs vpmtun reload)",
             false);

  vpmtun::ExecOptions eopt;
  std::string exec_socket, exec_config;
  auto* exec = app.add_subcommand(
      "exec", "Run an unmodified program as an instance of an app (serve = \"exec\", or remote)");
  exec->add_option("--app", eopt.app, "The app (its name in the daemon's configuration)")
      ->required();
  exec->add_option("-s,--socket", exec_socket,
                   "The daemon's library socket (default: [vpm] app_socket of -c, or "
                   "/run/vpmtun-app.sock)");
  exec->add_option("-c,--config", exec_config, "Take the library socket from this configuration");
  // Everything from the program's name on is the program's, options included.
  exec->prefix_command();
  exec->footer(
      "Usage: vpmtun exec --app NAME [-s SOCK | -c FILE] [--] PROGRAM [ARGS...]\n\n"
      "The program runs with the application library preloaded. When it binds a port\n"
      "its app listens on (any address, loopback, or the app's virtual address; TCP or\n"
      "UDP), the library binds an anonymous loopback port instead and registers it with\n"
      "the daemon, which relays the app's clients to it. The program still sees p1 in\n"
      "getsockname, and each client's own address and port in accept, getpeername and\n"
      "recvfrom. Other binds are left alone. Several instances (or pre-fork workers) of\n"
      "one app take its connections in turn; `vpmtun apps` lists them.\n\n"
      "Cooperative mode: for an app with remote = [\"vaddr:p1\", ...], the program's\n"
      "connect() to one of those is negotiated by the daemon with the server's VPM first\n"
      "(the AIDs must match), then goes to the p2 it got; getpeername still says p1, and\n"
      "a refusal is ECONNREFUSED.\n\n"
      "It never fails open: if the daemon is down, does not know the app, or refuses the\n"
      "user ([[app]] users), or the program is statically linked or set-user-ID, the\n"
      "program is not run (exit 125/126) or its bind fails; p1 itself is never bound.\n"
      "Otherwise the exit status is the program's.\n\n"
      "Examples:\n"
      "  vpmtun exec --app blue -- redis-server --port 9000\n"
      "  vpmtun exec --app web -c /etc/vpmtun/vpm.toml -- python3 -m http.server 9000\n"
      "  vpmtun exec --app web -- nginx -g 'daemon off;'\n"
      "  vpmtun exec --app store-client -- redis-cli -h 10.99.0.10 -p 6379 ping");

  // `vpmtun exec ... -- PROGRAM ...`: what follows "--" is the program's,
  // whatever it looks like; CLI11 sees what comes before.
  if (argc > 1 && std::string_view(argv[1]) == "exec")
    for (int j = 2; j < argc; ++j)
      if (std::string_view(argv[j]) == "--") {
        eopt.command.assign(argv + j + 1, argv + argc);
        argc = j;
        break;
      }
  CLI11_PARSE(app, argc, argv);

  if (*exec) {
    if (eopt.command.empty()) eopt.command = exec->remaining();
    eopt.socket = exec_socket;
    if (eopt.socket.empty()) {
      vpm::VpmConfig vpm_defaults;
      if (!exec_config.empty()) {
        auto cfg = vpmtun::load_config(exec_config, "nothing was run");
        if (!cfg) return 125;
        vpm_defaults = cfg->vpm;
      }
      eopt.socket = vpm::app_socket_path(vpm_defaults);
    }
    return vpmtun::exec_program(eopt);
  }

  for (auto* verb : {stats, table, apps, reload}) {
    if (!*verb) continue;
    std::string request = verb->get_name() + (json ? " json" : "");
    if (!filter_app.empty()) request += " app=" + filter_app;
    if (!filter_client.empty()) request += " client=" + filter_client;
    return ask(socket, config_path, request);
  }

  spdlog::set_level(spdlog::level::from_str(log_level == "warning" ? "warn" : log_level));
  if (log_format == "json") log_as_json();
  auto cfg = vpmtun::load_config(config_path);
  if (!cfg) return 1;
  if (*check) {
    describe_config(*cfg);
    if (cfg->metrics.listen) {
      try {
        tun::load_metrics_module();  // a broken install shows here, not when the daemon starts
      } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
      }
    }
    return 0;
  }
  if (*rep) return vpmtun::replay(*cfg, ropt);
  if (*run) return vpmtun::run_daemon(*cfg, dopt);
  return 2;
}
