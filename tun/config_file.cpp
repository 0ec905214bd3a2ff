// Reading the configuration file from disk.
#include "tun/config_file.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "vpm/coop_wire.hpp"

namespace tun {

namespace {

// The cores this process may run on (taskset, cpusets), not all the machine's.
unsigned usable_cores() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<unsigned>(CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

vpm::ConfigResult read_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return std::vector<vpm::ConfigError>{
        {path, 0, "", std::string("cannot read it: ") + std::strerror(errno)}};
  std::ostringstream text;
  text << in.rdbuf();
  auto parsed = vpm::parse_config(text.str(), path);
  auto* cfg = std::get_if<vpm::Config>(&parsed);
  if (cfg && cfg->daemon.name.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    cfg->daemon.name = vpm::name_ok(host) ? host : "vpmtun";
  }
  if (cfg && cfg->tun.queues_auto) cfg->tun.queues = vpm::auto_queues(*cfg, usable_cores());
  return parsed;
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

std::vector<uint8_t> read_coop_key(const vpm::Config& cfg, std::string* warning) {
  std::string path = cfg.cooperative.key_file;
  if (!path.starts_with("/") && cfg.file.find('/') != std::string::npos)
    path = cfg.file.substr(0, cfg.file.rfind('/') + 1) + path;
  std::string where = cfg.file + ": [cooperative] key_file " + path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(where + ": " + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  std::vector<uint8_t> key(4096);
  ssize_t n = S_ISREG(st.st_mode) ? ::read(fd, key.data(), key.size()) : -1;
  int err = errno;
  ::close(fd);
  if (n < 0) throw std::runtime_error(where + ": cannot read: " + std::strerror(err));
  key.resize(static_cast<size_t>(n));
  if (!key.empty() && key.back() == '\n') key.pop_back();
  if (key.size() < vpm::coop::kMinKeyBytes)
    throw std::runtime_error(where + ": " + std::to_string(key.size()) +
                             " bytes; a key needs at least " +
                             std::to_string(vpm::coop::kMinKeyBytes) +
                             " (e.g. head -c 32 /dev/urandom | base64 > FILE)");
  vpm::coop::load_crypto();
  if (warning && (st.st_mode & (S_IRGRP | S_IROTH)))
    *warning = where + ": others may read it (chmod 600)";
  return key;
}

}  // namespace tun
