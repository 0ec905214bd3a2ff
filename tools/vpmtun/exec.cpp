// `vpmtun exec`: run an unmodified program as an instance of an exec app.
#include "exec.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fmt/core.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "tun/control.hpp"
#include "tun/own_library.hpp"
#include "vpm/app_wire.hpp"

namespace vpmtun {

namespace {

namespace fs = std::filesystem;
using namespace vpm::appwire;

// Exit statuses of our own failures, as env(1) and timeout(1) use them.
constexpr int kFailed = 125, kCannotRun = 126, kNotFound = 127;

int fail(int code, const std::string& why) {
  fmt::print(stderr, "vpmtun exec: {}\n", why);
  return code;
}

// The program as execvp would find it.
std::optional<fs::path> find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return fs::path(name);
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  for (size_t at = 0; at <= dirs.size();) {
    size_t end = std::min(dirs.find(':', at), dirs.size());
    fs::path p =
        fs::path(dirs.substr(at, end - at).empty() ? "." : dirs.substr(at, end - at)) / name;
    if (::access(p.c_str(), X_OK) == 0 && !fs::is_directory(p)) return p;
    at = end + 1;
  }
  return std::nullopt;
}

// Why the library could not be preloaded into `program`, or "" if it can:
// the dynamic loader ignores LD_PRELOAD for statically linked programs,
// for set-user-ID ones, and for another architecture. A script is judged by
// its interpreter.
std::string unloadable(const fs::path& program, int depth = 0) {
  std::ifstream in(program, std::ios::binary);
  char head[256] = {};
  in.read(head, sizeof head);
  size_t got = static_cast<size_t>(in.gcount());
  if (got >= 2 && head[0] == '#' && head[1] == '!') {
    std::string line(head + 2, got - 2);
    line = line.substr(0, line.find('\n'));
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || depth > 2)
      return program.string() + ": a script without an interpreter";
    std::string interp = line.substr(start, line.find_first_of(" \t", start) - start);
    return unloadable(interp, depth + 1);
  }
  struct stat st {};
  if (::stat(program.c_str(), &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID)))
    return program.string() +
           " is set-user-ID or set-group-ID: the loader ignores LD_PRELOAD for it";
  Elf64_Ehdr eh{};
  if (got < sizeof eh) return program.string() + ": neither an ELF program nor a script";
  std::memcpy(&eh, head, sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
    return program.string() + ": neither an ELF program nor a script";
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
    return program.string() + " is built for another architecture than the application library";
  in.clear();
  for (int i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    in.seekg(static_cast<std::streamoff>(eh.e_phoff + static_cast<uint64_t>(i) * eh.e_phentsize));
    if (!in.read(reinterpret_cast<char*>(&ph), sizeof ph)) break;
    if (ph.p_type == PT_INTERP) return "";
  }
  return program.string() +
         " is statically linked: the application library cannot be loaded into it, so its "
         "binds could not be redirected";
}

// The library: $VPMTUN_LIBRARY, else installed beside this program, or in
// the build tree.
std::optional<fs::path> find_library() {
  if (const char* env = std::getenv("VPMTUN_LIBRARY"); env && *env) return fs::path(env);
  std::error_code ec;
  fs::path p = tun::own_library("libvpmtun-app.so", VPMTUN_APP_LIBRARY_BUILT);
  if (fs::exists(p, ec)) return fs::canonical(p, ec);
  return std::nullopt;
}

// The daemon's answer to a Hello for `app`: its Welcome, or what was wrong.
std::variant<Welcome, std::string> ask_app(const std::string& socket,
                                                           const std::string& app,
                                                           const std::string& command) {
  int fd = tun::connect_to(socket, SOCK_SEQPACKET);
  if (fd < 0)
    return socket + ": " +
           (errno == ENOENT || errno == ECONNREFUSED
                ? std::string("no vpmtun daemon is serving exec apps here (start one with an app "
                              "of serve = \"exec\" or remote, or give its library socket with "
                              "-s)")
                : std::strerror(errno));
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto bytes = encode(Hello{app, command});
  uint8_t buf[kMaxMessage];
  ssize_t n = -1;
  if (::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()))
    n = ::recv(fd, buf, sizeof buf, 0);  // a passed peer table is closed with the socket
  ::close(fd);
  if (n <= 0) return socket + ": the daemon did not answer";
  std::string why;
  auto m = decode({buf, static_cast<size_t>(n)}, &why);
  const auto* w = m ? std::get_if<Welcome>(&*m) : nullptr;
  if (!w) return socket + ": the daemon's answer is not a Welcome (" + why + ")";
  if (w->status != Status::ok) return w->reason;
  return *w;
}

// A sanitizer build of the library needs the sanitizer's runtime first in
// the program's list of libraries: the one this process was built with.
std::string sanitizer_runtime() {
#if defined(__SANITIZE_ADDRESS__)
  Dl_info info{};
  if (void* sym = ::dlsym(RTLD_DEFAULT, "__asan_init");
      sym && ::dladdr(sym, &info) && info.dli_fname)
    return info.dli_fname;
#endif
  return "";
}

}  // namespace

int exec_program(const ExecOptions& opt) {
  if (opt.command.empty())
    return fail(kFailed, "no program to run (vpmtun exec --app NAME -- CMD ...)");
  std::string command;
  for (const auto& word : opt.command) command += (command.empty() ? "" : " ") + word;

  auto program = find_program(opt.command[0]);
  if (!program) return fail(kNotFound, opt.command[0] + ": command not found");
  if (::access(program->c_str(), X_OK) != 0)
    return fail(errno == ENOENT ? kNotFound : kCannotRun,
                program->string() + ": " + std::strerror(errno));
  if (auto why = unloadable(*program); !why.empty()) return fail(kCannotRun, why + "; not run");
  auto library = find_library();
  if (!library)
    return fail(kFailed,
                "the application library libvpmtun-app.so is not installed beside this vpmtun "
                "(set VPMTUN_LIBRARY to its path)");

  fs::path socket = fs::absolute(opt.socket);
  auto answer = ask_app(socket, opt.app, command);
  if (auto* why = std::get_if<std::string>(&answer))
    return fail(kFailed, "app '" + opt.app + "': " + *why);
  const auto& welcome = std::get<Welcome>(answer);

  std::string preload = library->string();
  if (auto rt = sanitizer_runtime(); !rt.empty()) {
    preload = rt + " " + preload;
    ::setenv("ASAN_OPTIONS", "detect_leaks=0:verify_asan_link_order=0", 0);
  }
  if (const char* old = std::getenv("LD_PRELOAD"); old && *old) preload += std::string(" ") + old;
  ::setenv("LD_PRELOAD", preload.c_str(), 1);
  ::setenv("VPMTUN_APP", opt.app.c_str(), 1);
  ::setenv("VPMTUN_SOCKET", socket.c_str(), 1);
  ::setenv("VPMTUN_LISTEN", format_listens(welcome.listens).c_str(), 1);
  ::setenv("VPMTUN_REMOTE", format_listens(welcome.remotes).c_str(), 1);

  std::vector<char*> argv;
  for (const auto& word : opt.command) argv.push_back(const_cast<char*>(word.c_str()));
  argv.push_back(nullptr);
  ::execv(program->c_str(), argv.data());
  return fail(errno == ENOENT ? kNotFound : kCannotRun,
              program->string() + ": " + std::strerror(errno));
}

}  // namespace vpmtun
