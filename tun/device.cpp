// The Linux TUN device (ioctl set-up) and the in-memory fake.
#include "tun/device.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/ipv6.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tun {

namespace {

std::runtime_error sys_error(const std::string& what) {
  return std::runtime_error(what + ": " + std::strerror(errno));
}

// A socket for interface ioctls, closed on scope exit.
struct IoctlSocket {
  int fd;
  explicit IoctlSocket(int family) : fd(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    if (fd < 0) throw sys_error("socket for interface configuration");
  }
  ~IoctlSocket() { ::close(fd); }
};

ifreq named(const std::string& name) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  return ifr;
}

void configure(const std::string& name, const vpm::TunConfig& cfg) {
  IoctlSocket s4(AF_INET);
  ifreq ifr = named(name);
  ifr.ifr_mtu = static_cast<int>(cfg.mtu);
  if (::ioctl(s4.fd, SIOCSIFMTU, &ifr) < 0)
    throw sys_error(name + ": setting MTU " + std::to_string(cfg.mtu));
  if (cfg.address) {
    auto set = [&](unsigned long request, uint32_t value, const char* what) {
      ifreq r = named(name);
      auto* sin = reinterpret_cast<sockaddr_in*>(&r.ifr_addr);
      sin->sin_family = AF_INET;
      sin->sin_addr.s_addr = value;
      if (::ioctl(s4.fd, request, &r) < 0) throw sys_error(name + ": setting " + what);
    };
    uint32_t a;
    std::memcpy(&a, &cfg.address->addr.bytes[12], 4);
    uint32_t mask = cfg.address->len == 0 ? 0 : htonl(~uint32_t{0} << (32 - cfg.address->len));
    set(SIOCSIFADDR, a, "IPv4 address");
    set(SIOCSIFNETMASK, mask, "IPv4 netmask");
  }
  ifr = named(name);
  if (::ioctl(s4.fd, SIOCGIFFLAGS, &ifr) < 0) throw sys_error(name + ": reading flags");
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
  if (::ioctl(s4.fd, SIOCSIFFLAGS, &ifr) < 0) throw sys_error(name + ": bringing the link up");
  if (cfg.address6) {
    IoctlSocket s6(AF_INET6);
    ifreq idx = named(name);
    if (::ioctl(s6.fd, SIOCGIFINDEX, &idx) < 0) throw sys_error(name + ": interface index");
    in6_ifreq r{};
    std::memcpy(&r.ifr6_addr, cfg.address6->addr.bytes.data(), 16);
    r.ifr6_prefixlen = cfg.address6->len;
    r.ifr6_ifindex = idx.ifr_ifindex;
    if (::ioctl(s6.fd, SIOCSIFADDR, &r) < 0) throw sys_error(name + ": setting IPv6 address");
  }
}

}  // namespace

TunDevice::TunDevice(const vpm::TunConfig& cfg) : mtu_(cfg.mtu), name_(cfg.name) {
  fd_ = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw sys_error("/dev/net/tun (is the tun module available, and are we root?)");
  ifreq ifr = named(cfg.name);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (::ioctl(fd_, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == EBUSY)
      throw std::runtime_error(
          "TUN " + cfg.name +
          " is in use by another process (another vpmtun?); choose another [tun] name");
    if (err == EPERM)
      throw std::runtime_error("creating TUN " + cfg.name + " needs CAP_NET_ADMIN (run as root)");
    errno = err;
    throw sys_error("creating TUN " + cfg.name);
  }
  name_ = ifr.ifr_name;
  if (cfg.configure) {
    try {
      configure(name_, cfg);
    } catch (...) {
      ::close(fd_);
      fd_ = -1;
      throw;
    }
  }
}

TunDevice::~TunDevice() {
  if (fd_ >= 0) ::close(fd_);
}

size_t TunDevice::read(std::span<uint8_t> buffer) {
  for (;;) {
    ssize_t n = ::read(fd_, buffer.data(), buffer.size());
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    return 0;  // EAGAIN: nothing waiting
  }
}

bool TunDevice::write(std::span<const uint8_t> packet) {
  for (;;) {
    ssize_t n = ::write(fd_, packet.data(), packet.size());
    if (n == static_cast<ssize_t>(packet.size())) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

size_t FakeDevice::read(std::span<uint8_t> buffer) {
  if (inbound.empty()) return 0;
  auto p = std::move(inbound.front());
  inbound.pop_front();
  size_t n = std::min(p.size(), buffer.size());
  std::copy(p.begin(), p.begin() + static_cast<long>(n), buffer.begin());
  return n;
}

bool FakeDevice::write(std::span<const uint8_t> packet) {
  written.emplace_back(packet.begin(), packet.end());
  return true;
}

}  // namespace tun
