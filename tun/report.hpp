// What a running daemon tells its operator: the answers to `vpmtun stats`,
// `table` and `apps` (text for people, JSON for programs) and the
// Prometheus exposition for [metrics].
//
// All of it is rendered on the daemon's own thread from the live counters
// and the flow table, so every answer is one consistent snapshot. A daemon
// of several workers (tun/supervisor.hpp) sums their Figures and has one
// worker render the sum with its rules; table rows are joined.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tun/instances.hpp"
#include "vpm/address.hpp"

namespace tun {

class Daemon;

struct TableFilter {
  std::string app;                    // only this app's flows, if set
  std::optional<vpm::Prefix> client;  // only clients in this prefix, if set
};

// Everything `stats`, `apps` and the metrics count, summable.
struct Figures {
  struct Counter {
    std::string group, name;
    uint64_t value;
  };
  struct App {
    uint64_t active = 0, flows = 0, port_waits = 0, refused = 0;             // the engine's
    uint64_t accepted = 0, open = 0, backend_failures = 0, syn_cookies = 0;  // the stack's
    int backend_up = -1;  // forward: up (1), down (0), not known yet (-1)
  };
  uint64_t uptime_s = 0;
  std::vector<Counter> counters;              // in stats order
  std::vector<App> apps;                      // per app of the configuration
  std::vector<uint64_t> ports_in_use, ports;  // per listen (per-connection allocation)
  std::map<std::pair<std::string, std::string>, uint64_t> flows_by_state;  // (proto, state)
  std::vector<InstanceInfo> instances;  // the registry's (a worker has none: its supervisor has)
};

Figures figures_of(const Daemon& d);
class CoopClient;
// The "cooperative_client" counters of `stats`.
std::vector<Figures::Counter> coop_client_counters(const CoopClient& client);
// The "library" counters of `stats`: the registry's (tun/instances.hpp;
// none in a worker) and those of this process's relays.
std::vector<Figures::Counter> library_counters(const InstanceRegistry* registry,
                                               const Relays& relays);
// Adds `more` into `sum`: counts add up, the uptime is the longest, a
// backend is up when it is up for any worker, and an instance's counts
// are summed by its id. False when the two do not
// match (another configuration).
bool add(Figures& sum, const Figures& more);
// One line per figure, and back (std::nullopt for what encode did not make).
std::string encode(const Figures& f);
std::optional<Figures> decode(std::string_view text);

std::string render_stats(const Figures& f, bool json);
std::string render_table(const Daemon& d, const TableFilter& filter, bool json);
// The tables of several workers (render_table's answers) as one.
std::string join_tables(const std::vector<std::string>& parts, bool json);
// `d` gives the rules, `f` the figures (its own, or the workers' sum).
std::string render_apps(const Daemon& d, const Figures& f, bool json);
std::string render_metrics(const Daemon& d, const Figures& f);

}  // namespace tun
