// `vpmtun run`: the daemon in the foreground.
#pragma once

#include "tun/daemon.hpp"
#include "vpm/config.hpp"

namespace vpmtun {

// Returns the process exit code.
int run_daemon(vpm::Config cfg, tun::DaemonOptions opt);

}  // namespace vpmtun
