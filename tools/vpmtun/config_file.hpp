// Loading a configuration file for the vpmtun command.
#pragma once

#include <optional>
#include <string>

#include "vpm/config.hpp"

namespace vpmtun {

// Reads and validates FILE. On failure prints every error (file:line: key:
// message) to stderr, then what follows from them (`outcome`), and returns nullopt.
std::optional<vpm::Config> load_config(const std::string& path,
                                       const char* outcome = "nothing was started");

}  // namespace vpmtun
