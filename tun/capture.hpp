// Live pcap captures of raw IP packets (--capture-tun, --capture-stack).
//
// The file is made once (create()): the pcap header, LINKTYPE_RAW. Every
// process that captures to it appends whole records with one write() of
// an O_APPEND descriptor, which the kernel does not interleave with
// another's, so the workers of a daemon (tun/supervisor.hpp) share one
// file. Records are buffered up to kBuffer and written at least every
// flush() (the daemon's tick, 50 ms); records of different workers may so
// be out of time order by that much (`reordercap` sorts a file).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tun {

class Capture {
 public:
  static constexpr size_t kBuffer = 64 * 1024;
  static constexpr uint32_t kSnapLength = 262144;

  // Creates (or truncates) `path` with the pcap header and returns an
  // O_APPEND descriptor to it. Throws std::runtime_error naming the path.
  static int create(const std::string& path);

  explicit Capture(int fd);  // takes fd
  ~Capture();
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;

  void write(std::span<const uint8_t> packet);
  void flush();

 private:
  int fd_;
  std::vector<uint8_t> buffer_;
  bool failed_ = false;  // a write failed (said once in the log)
};

}  // namespace tun
