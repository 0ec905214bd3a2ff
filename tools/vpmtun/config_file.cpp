// Reads a config file from disk and reports its errors.
#include "config_file.hpp"

#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

namespace vpmtun {

std::optional<vpm::Config> load_config(const std::string& path, const char* outcome) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    spdlog::error("{}: cannot read the configuration file", path);
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto result = vpm::parse_config(text.str(), path);
  if (auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&result)) {
    for (auto& e : *errors) spdlog::error("{}", e.str());
    spdlog::error("{}: {} error{}; {}", path, errors->size(), errors->size() == 1 ? "" : "s",
                  outcome);
    return std::nullopt;
  }
  return std::get<vpm::Config>(std::move(result));
}

}  // namespace vpmtun
