// What a running daemon tells its operator: the answers to `vpmtun stats`,
// `table` and `apps` (text for people, JSON for programs) and the
// Prometheus exposition for [metrics].
//
// All of it is rendered on the daemon's own thread from the live counters
// and the flow table, so every answer is one consistent snapshot.
#pragma once

#include <optional>
#include <string>

#include "vpm/address.hpp"

namespace tun {

class Daemon;

struct TableFilter {
  std::string app;                    // only this app's flows, if set
  std::optional<vpm::Prefix> client;  // only clients in this prefix, if set
};

std::string render_stats(const Daemon& d, bool json);
std::string render_table(const Daemon& d, const TableFilter& filter, bool json);
std::string render_apps(const Daemon& d, bool json);
std::string render_metrics(const Daemon& d);

}  // namespace tun
