// vpmtun's own shared libraries (own_library.hpp).
#include "tun/own_library.hpp"

namespace tun {

std::filesystem::path own_library(const std::string& name, const std::filesystem::path& built) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  fs::path installed = (self.parent_path() / VPMTUN_PRIVATE_LIBDIR / name).lexically_normal();
  if (!ec && fs::exists(installed, ec)) return installed;
  if (fs::exists(built, ec)) return built;
  return installed;
}

}  // namespace tun
