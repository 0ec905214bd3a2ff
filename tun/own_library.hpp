// Where vpmtun's own shared libraries are: libvpmtun-app.so (what `vpmtun
// exec` preloads) and vpmtun-metrics.so (the metrics server). Installed, in
// ${libdir}/vpmtun, found from the directory of the running program; not
// installed, where the build made them.
#pragma once

#include <filesystem>
#include <string>

namespace tun {

// The installed `name` if it is there, else `built` (the build tree's copy,
// an absolute path) if that is, else the installed path, for an error to name.
std::filesystem::path own_library(const std::string& name, const std::filesystem::path& built);

}  // namespace tun
