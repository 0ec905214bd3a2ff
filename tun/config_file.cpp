// Reading the configuration file from disk.
#include "tun/config_file.hpp"

#include <fmt/core.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tun {

vpm::ConfigResult read_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return std::vector<vpm::ConfigError>{
        {path, 0, "", std::string("cannot read it: ") + std::strerror(errno)}};
  std::ostringstream text;
  text << in.rdbuf();
  return vpm::parse_config(text.str(), path);
}

std::vector<std::string> error_report(const std::string& path,
                                      const std::vector<vpm::ConfigError>& errors,
                                      const std::string& outcome) {
  std::vector<std::string> lines;
  for (auto& e : errors) lines.push_back(e.str());
  lines.push_back(fmt::format("{}: {} error{}; {}", path, errors.size(),
                              errors.size() == 1 ? "" : "s", outcome));
  return lines;
}

}  // namespace tun
