// `vpmtun replay`: the translation engine run over a capture file.
#pragma once

#include <string>

#include "vpm/config.hpp"

namespace vpmtun {

struct ReplayOptions {
  std::string input;
  std::string output;
  bool reverse = false;  // stack-side capture back to the TUN side
  bool print = false;    // one line per packet
  bool quiet = false;    // no summary
};

// Returns the process exit code: 0 when the output was written.
int replay(const vpm::Config& cfg, const ReplayOptions& opt);

}  // namespace vpmtun
