// Reading the configuration file from disk: shared by the vpmtun command and
// the daemon's reload, so both report a bad file the same way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vpm/config.hpp"

namespace tun {

// Parses FILE; a file that cannot be read is one error (line 0). Without
// [daemon] name, the node's name is the host name; with [tun] queues =
// "auto" (the default), queues is vpm::auto_queues() of the cores this
// process may run on.
vpm::ConfigResult read_config(const std::string& path);


// Lines that report them: each error as FILE:LINE: KEY: message, then
// "FILE: N errors; OUTCOME" (OUTCOME says what follows from them).
std::vector<std::string> error_report(const std::string& path,
                                      const std::vector<vpm::ConfigError>& errors,
                                      const std::string& outcome);

// Cooperative mode's shared secret: the content of [cooperative] key_file
// (relative to the configuration file's directory), a trailing newline
// ignored, at least vpm::coop::kMinKeyBytes. Throws std::runtime_error
// naming the file and what is wrong; *warning says whether others may read it.
std::vector<uint8_t> read_coop_key(const vpm::Config& cfg, std::string* warning);

}  // namespace tun
