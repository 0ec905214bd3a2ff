// Changing the rules of a running daemon (`vpmtun reload`, SIGHUP).
//
// Theory of operation. A reload never changes what a flow already has: its
// app, its p2 and its endpoint stay until it ends. merge_reload() joins the
// running configuration and the new file into the one that takes over:
//   - every app of the new file, in the file's order;
//   - then each running app that the new file removed, or changed in
//     anything but its client rules, and that still has flows: it is kept,
//     marked draining. It keeps its listens and p2s and serves the flows it
//     has; no client rule leads to it any more. Merging again once its flows
//     have ended drops it (the daemon looks every second).
// An app counts as the same app when its name, AID, listens and service
// (serve, forward, proxy_protocol) are equal; its flows and counters carry
// over, and with the previous rules passed to Ruleset its p2s stay too.
// What a running daemon cannot change (the TUN, the port range, the
// allocation mode, control socket, metrics address, user, flow table size)
// is refused by reload_errors(), naming the key, and nothing changes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vpm/config.hpp"

namespace vpm {

// What the new file would change that needs a restart; empty if none.
std::vector<ConfigError> reload_errors(const Config& running, const Config& next);

struct Reload {
  Config config;                 // what takes over: the new file's apps, then the draining ones
  std::vector<uint16_t> app_of;  // running app index -> index in `config`, or kNoApp (gone)
  std::string summary;           // for the operator: "added red; removed blue (draining); ..."
};

// `flows_of_app[i]`: the flows and connections running app i still has.
Reload merge_reload(const Config& running, const Config& next,
                    const std::vector<size_t>& flows_of_app);

}  // namespace vpm
