// `vpmtun exec`: run an unmodified program as an instance of an exec app.
#pragma once

#include <string>
#include <vector>

namespace vpmtun {

struct ExecOptions {
  std::string app;
  std::string socket;  // the daemon's library socket
  std::vector<std::string> command;
};

// Asks the daemon whether this user may run instances of the app, checks
// that the library can be loaded into the program, and replaces this
// process with the program (so its exit status is the program's). Returns
// only on failure: 125 (vpmtun's own), 126 (cannot run), 127 (not found).
int exec_program(const ExecOptions& opt);

}  // namespace vpmtun
