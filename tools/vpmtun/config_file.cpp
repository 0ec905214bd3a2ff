// Reads a config file from disk and reports its errors.
#include "config_file.hpp"

#include <spdlog/spdlog.h>

#include "tun/config_file.hpp"

namespace vpmtun {

std::optional<vpm::Config> load_config(const std::string& path, const char* outcome) {
  auto result = tun::read_config(path);
  if (auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&result)) {
    for (auto& line : tun::error_report(path, *errors, outcome)) spdlog::error("{}", line);
    return std::nullopt;
  }
  return std::get<vpm::Config>(std::move(result));
}

}  // namespace vpmtun
