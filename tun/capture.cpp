// pcap captures (capture.hpp).
#include "tun/capture.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tun {

namespace {

constexpr uint32_t kLinkTypeRaw = 101;  // LINKTYPE_RAW: IPv4 or IPv6, no link header

void append(std::vector<uint8_t>& out, const void* data, size_t size) {
  auto* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + size);
}

bool write_all(int fd, const uint8_t* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int Capture::create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot write capture: " + std::strerror(errno));
  // The file header, in this host's byte order as readers expect of a magic they check.
  struct {
    uint32_t magic = 0xa1b2c3d4;
    uint16_t major = 2, minor = 4;
    int32_t zone = 0;
    uint32_t sigfigs = 0, snaplen = kSnapLength, linktype = kLinkTypeRaw;
  } header;
  static_assert(sizeof header == 24);
  if (!write_all(fd, reinterpret_cast<const uint8_t*>(&header), sizeof header)) {
    std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error(path + ": cannot write capture: " + why);
  }
  return fd;
}

Capture::Capture(int fd) : fd_(fd) { buffer_.reserve(kBuffer + kSnapLength + 16); }

Capture::~Capture() {
  flush();
  ::close(fd_);
}

void Capture::write(std::span<const uint8_t> packet) {
  timeval now{};
  ::gettimeofday(&now, nullptr);
  auto length = static_cast<uint32_t>(packet.size());
  uint32_t caplen = std::min(length, kSnapLength);
  uint32_t record[4] = {static_cast<uint32_t>(now.tv_sec), static_cast<uint32_t>(now.tv_usec),
                        caplen, length};
  append(buffer_, record, sizeof record);
  append(buffer_, packet.data(), caplen);
  if (buffer_.size() >= kBuffer) flush();
}

void Capture::flush() {
  if (buffer_.empty()) return;
  // One write of whole records: another worker's cannot land inside it.
  if (!write_all(fd_, buffer_.data(), buffer_.size()) && !failed_) {
    failed_ = true;
    spdlog::error("capture: a write failed ({}); packets are missing from the file",
                  std::strerror(errno));
  }
  buffer_.clear();
}

}  // namespace tun
