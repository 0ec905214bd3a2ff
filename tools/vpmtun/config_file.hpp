// Loading a configuration file for the vpmtun command.
#pragma once

#include <optional>
#include <string>

#include "vpm/config.hpp"

namespace vpmtun {

// Reads and validates FILE. On failure prints every error (file:line: key:
// message) to stderr and returns nullopt.
std::optional<vpm::Config> load_config(const std::string& path);

}  // namespace vpmtun
