// Packet devices: the Linux TUN device, and an in-memory fake with the same
// contract for tests that must not need root.
//
// Contract: read() copies one whole IP packet into the caller's buffer and
// returns its length, or 0 when none is waiting (never blocks); a buffer of
// mtu() bytes always suffices. write() sends one whole IP packet and returns
// false if the device refused it (the caller counts that). The caller owns
// every buffer; nothing is kept after the call returns.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vpm/config.hpp"

namespace tun {

class PacketDevice {
 public:
  virtual ~PacketDevice() = default;
  virtual size_t read(std::span<uint8_t> buffer) = 0;
  virtual bool write(std::span<const uint8_t> packet) = 0;
  virtual int fd() const = 0;  // for epoll; -1 for the fake
  virtual uint32_t mtu() const = 0;
};

// A TUN interface owned by this process. With configure = true it sets the
// MTU, the IPv4 and IPv6 addresses (the kernel adds the prefix routes) and
// brings the link up. All of it disappears when the device is closed: a
// non-persistent TUN is deleted with its last file descriptor, taking its
// addresses and routes along.
class TunDevice : public PacketDevice {
 public:
  // Throws std::runtime_error with what to change (name taken, no
  // CAP_NET_ADMIN, no /dev/net/tun).
  explicit TunDevice(const vpm::TunConfig& cfg);
  ~TunDevice() override;

  size_t read(std::span<uint8_t> buffer) override;
  bool write(std::span<const uint8_t> packet) override;
  int fd() const override { return fd_; }
  uint32_t mtu() const override { return mtu_; }
  const std::string& name() const { return name_; }

 private:
  int fd_ = -1;
  uint32_t mtu_;
  std::string name_;
};

// Queues in both directions: tests push what "clients" send and look at
// what the daemon wrote.
class FakeDevice : public PacketDevice {
 public:
  explicit FakeDevice(uint32_t mtu = 65520) : mtu_(mtu) {}
  size_t read(std::span<uint8_t> buffer) override;
  bool write(std::span<const uint8_t> packet) override;
  int fd() const override { return -1; }
  uint32_t mtu() const override { return mtu_; }

  std::deque<std::vector<uint8_t>> inbound;   // to be read by the daemon
  std::vector<std::vector<uint8_t>> written;  // written by the daemon

 private:
  uint32_t mtu_;
};

}  // namespace tun
