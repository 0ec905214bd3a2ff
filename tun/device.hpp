// Packet devices: the Linux TUN device, and an in-memory fake with the same
// contract for tests that must not need root.
//
// Contract: read() copies one whole IP packet into the caller's buffer and
// returns its length, or 0 when none is waiting (never blocks); a buffer of
// kMaxPacket bytes always suffices (with offloads a TCP packet may be a
// 64 KiB train of the client's segments). It sets `verified` when the
// kernel vouches for the TCP/UDP checksum (it made or checked it), so that
// nobody need check it again.
// write() sends one whole IP packet and returns false if the device refused
// it (the caller counts that); when segments() is true, a TCP packet may
// carry more than the client's MSS (`mss`, from its SYN) and is cut into
// segments on the way out, and the checksum field may be changed. The caller
// owns every buffer; nothing is kept after the call returns.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vpm/config.hpp"

namespace tun {

inline constexpr size_t kMaxPacket = 65535;

class PacketDevice {
 public:
  virtual ~PacketDevice() = default;
  virtual size_t read(std::span<uint8_t> buffer, bool& verified) = 0;
  virtual bool write(std::span<uint8_t> packet, uint16_t mss = 0) = 0;
  virtual int fd() const = 0;  // for epoll; -1 for the fake
  virtual uint32_t mtu() const = 0;
  virtual bool segments() const = 0;  // TCP segmentation offload (see write())
  // Packets the kernel dropped because its queue to us was full.
  virtual uint64_t queue_drops() const { return 0; }
};

// A TUN interface owned by this process. With configure = true it sets the
// MTU, the IPv4 and IPv6 addresses (the kernel adds the prefix routes) and
// brings the link up. All of it disappears when the device is closed: a
// non-persistent TUN is deleted with its last file descriptor, taking its
// addresses and routes along.
// With offload = true every packet carries a virtio-net header (IFF_VNET_HDR)
// and the kernel is told we take partial checksums and TCP segment trains
// (TUNSETOFFLOAD): a stream then costs one read or write per up to 64 KiB
// instead of per 1500 bytes. Partial checksums are completed on read; on
// write, TCP packets longer than the client's MSS go out as GSO packets
// that the kernel (or the NIC) cuts to that MSS.
// With [tun] queues > 1 the device is multi-queue (IFF_MULTI_QUEUE): each
// queue is a file descriptor of its own, read and written by one worker.
class TunDevice : public PacketDevice {
 public:
  // Throws std::runtime_error with what to change (name taken, no
  // CAP_NET_ADMIN, no /dev/net/tun).
  explicit TunDevice(const vpm::TunConfig& cfg);
  ~TunDevice() override;

  size_t read(std::span<uint8_t> buffer, bool& verified) override;
  bool write(std::span<uint8_t> packet, uint16_t mss = 0) override;
  int fd() const override { return fd_; }
  uint32_t mtu() const override { return mtu_; }
  bool segments() const override { return vnet_; }
  uint64_t queue_drops() const override;
  const std::string& name() const { return name_; }
  // [tun] queues: how many this device has; use_queue(q) keeps queue q
  // only (a worker's), and reads and writes there.
  size_t queues() const { return queues_.size(); }
  void use_queue(size_t q);
  // Has the kernel pick each packet's queue by its addresses alone (an
  // eBPF steering program), not by its flow: every connection of a client
  // address reaches one worker. Throws std::runtime_error when it cannot.
  void steer_by_addresses();

 private:
  std::vector<int> queues_;  // every queue's fd while all are kept
  int fd_ = -1;
  uint32_t mtu_;
  std::string name_;
  bool vnet_ = false;
};

// No device: a daemon without [tun] (cooperative mode's client side only).
class NoDevice : public PacketDevice {
 public:
  size_t read(std::span<uint8_t>, bool&) override { return 0; }
  bool write(std::span<uint8_t>, uint16_t) override { return false; }
  int fd() const override { return -1; }
  uint32_t mtu() const override { return 65520; }
  bool segments() const override { return false; }
};

// Queues in both directions: tests push what "clients" send and look at
// what the daemon wrote.
class FakeDevice : public PacketDevice {
 public:
  explicit FakeDevice(uint32_t mtu = 65520) : mtu_(mtu) {}
  size_t read(std::span<uint8_t> buffer, bool& verified) override;
  bool write(std::span<uint8_t> packet, uint16_t mss = 0) override;
  int fd() const override { return -1; }
  uint32_t mtu() const override { return mtu_; }
  bool segments() const override { return segmenting; }

  std::deque<std::vector<uint8_t>> inbound;   // to be read by the daemon
  std::vector<std::vector<uint8_t>> written;  // written by the daemon
  std::vector<uint16_t> written_mss;          // the mss each was written with
  bool segmenting = false;                    // claim segmentation offload

 private:
  uint32_t mtu_;
};

}  // namespace tun
