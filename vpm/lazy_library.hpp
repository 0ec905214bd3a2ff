// A shared library opened the first time one of its functions is needed.
//
// For the C libraries only some commands use: libcrypto serves cooperative
// mode alone, libpcap only captures that are not classic pcap. Linked the
// usual way, every start of vpmtun would load them and what they depend on
// (libpcap brings eight more libraries, D-Bus and systemd's among them), a few
// milliseconds that a short `vpmtun replay` pays in full.
#pragma once

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace vpm {

class LazyLibrary {
 public:
  // `name`: a SONAME the dynamic linker finds ("libcrypto.so.3") or a path;
  // `what`: what needs it, for the error when it is missing.
  LazyLibrary(std::string name, std::string what)
      : name_(std::move(name)), what_(std::move(what)) {}

  // Loads the library unless it is; throws std::runtime_error saying what
  // needs it and why it did not load.
  void load() {
    std::call_once(once_, [this] {
      handle_ = ::dlopen(name_.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle_) error_ = ::dlerror();
    });
    if (!handle_)
      throw std::runtime_error(what_ + " needs " + name_ + ", which did not load: " + error_);
  }

  // The function `name`, of type Fn (declare it as in the library's header:
  // decltype(HMAC)). Look it up once and keep the pointer.
  template <typename Fn>
  Fn* function(const char* name) {
    load();
    void* f = ::dlsym(handle_, name);
    if (!f) throw std::runtime_error(name_ + " has no " + name);
    return reinterpret_cast<Fn*>(f);
  }

 private:
  std::string name_;
  std::string what_;
  std::once_flag once_;
  void* handle_ = nullptr;
  std::string error_;
};

}  // namespace vpm
