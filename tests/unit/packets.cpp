// Test helper implementation: config parsing that reports errors to Catch.
#include "packets.hpp"

#include <catch2/catch.hpp>

namespace testpkt {

vpm::Config config(const std::string& toml) {
  auto r = vpm::parse_config(toml, "test.toml");
  if (auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&r)) {
    for (auto& e : *errors) UNSCOPED_INFO(e.str());
    FAIL("test config did not parse");
  }
  return std::get<vpm::Config>(r);
}

}  // namespace testpkt
