// The Linux TUN device (ioctl set-up) and the in-memory fake.
#include "tun/device.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_tun.h>
#include <linux/ipv6.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "vpm/checksum.hpp"

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

namespace {

// One queue of TUN `name` ("" or a pattern: the kernel names it), opened
// with `flags`. Returns its fd and sets `name` to the device's name.
int open_queue(std::string& name, short flags) {
  int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw sys_error("/dev/net/tun (is the tun module available, and are we root?)");
  ifreq ifr = named(name);
  ifr.ifr_flags = flags;
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    ::close(fd);
    if (err == EBUSY)
      throw std::runtime_error(
          "TUN " + name +
          " is in use by another process (another vpmtun?); choose another [tun] name");
    if (err == EPERM)
      throw std::runtime_error("creating TUN " + name + " needs CAP_NET_ADMIN (run as root)");
    errno = err;
    throw sys_error("creating TUN " + name);
  }
  name = ifr.ifr_name;
  return fd;
}

}  // namespace

TunDevice::TunDevice(const vpm::TunConfig& cfg) : mtu_(cfg.mtu), name_(cfg.name) {
  auto flags = static_cast<short>(IFF_TUN | IFF_NO_PI | (cfg.offload ? IFF_VNET_HDR : 0) |
                                  (cfg.queues > 1 ? IFF_MULTI_QUEUE : 0));
  vnet_ = cfg.offload;
  try {
    // The first open creates the device; the others attach queues to it.
    // The kernel then spreads packets over the queues by a hash of each
    // flow, and sends a flow's packets to the queue its replies came from.
    for (uint32_t q = 0; q < cfg.queues; ++q) {
      queues_.push_back(open_queue(name_, flags));
      if (vnet_ && ::ioctl(queues_.back(), TUNSETOFFLOAD,
                           TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0)
        throw sys_error("TUN " + name_ + ": enabling offloads (set [tun] offload = false)");
    }
    fd_ = queues_[0];
    ifreq qlen = named(name_);
    qlen.ifr_qlen = static_cast<int>(cfg.txqueuelen);
    IoctlSocket s(AF_INET);
    if (::ioctl(s.fd, SIOCSIFTXQLEN, &qlen) < 0)
      throw sys_error("TUN " + name_ + ": setting txqueuelen " + std::to_string(cfg.txqueuelen));
    if (cfg.configure) configure(name_, cfg);
  } catch (...) {
    for (int fd : queues_) ::close(fd);
    throw;
  }
}

TunDevice::~TunDevice() {
  for (int fd : queues_) ::close(fd);
}

namespace {

bpf_insn instruction(uint8_t code, uint8_t dst, uint8_t src, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.imm = imm;
  return i;
}

// A socket filter that returns a hash of the packet's two addresses (the
// kernel takes it modulo the queues). r6 holds the context, as the
// packet loads need; r7 gathers the addresses' words by XOR; a packet that
// is neither IPv4 nor IPv6 returns its version, and one too short for a
// load ends the program, which returns 0.
std::vector<bpf_insn> address_hash() {
  std::vector<bpf_insn> p;
  auto gather = [&p](int32_t offset) {
    p.push_back(instruction(BPF_LD | BPF_ABS | BPF_W, 0, 0, offset));
    p.push_back(instruction(BPF_ALU64 | BPF_XOR | BPF_X, 7, 0, 0));
  };
  auto jump = [&p](uint8_t code, int32_t imm) {
    p.push_back(instruction(BPF_JMP | code, 0, 0, imm));
    return p.size() - 1;
  };
  auto land = [&p](size_t from) { p[from].off = static_cast<int16_t>(p.size() - from - 1); };
  p.push_back(instruction(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0));
  p.push_back(instruction(BPF_ALU64 | BPF_MOV | BPF_K, 7, 0, 0));
  p.push_back(instruction(BPF_LD | BPF_ABS | BPF_B, 0, 0, 0));
  p.push_back(instruction(BPF_ALU64 | BPF_RSH | BPF_K, 0, 0, 4));
  size_t to_v6 = jump(BPF_JEQ | BPF_K, 6);
  size_t other = jump(BPF_JNE | BPF_K, 4);
  for (int32_t offset : {12, 16}) gather(offset);  // IPv4 source and destination
  size_t to_mix = jump(BPF_JA, 0);
  land(to_v6);
  for (int32_t offset = 8; offset < 40; offset += 4) gather(offset);  // IPv6's
  land(to_mix);
  // Spread the bits into the low 16 the kernel keeps.
  p.push_back(instruction(BPF_ALU64 | BPF_MOV | BPF_X, 0, 7, 0));
  p.push_back(instruction(BPF_ALU | BPF_MUL | BPF_K, 0, 0, static_cast<int32_t>(0x9e3779b1u)));
  p.push_back(instruction(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16));
  land(other);
  p.push_back(instruction(BPF_JMP | BPF_EXIT, 0, 0, 0));
  return p;
}

}  // namespace

void TunDevice::steer_by_addresses() {
  std::vector<bpf_insn> program = address_hash();
  bpf_attr attr{};
  attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
  attr.insns = reinterpret_cast<uint64_t>(program.data());
  attr.insn_cnt = static_cast<uint32_t>(program.size());
  attr.license = reinterpret_cast<uint64_t>("Dual MIT/GPL");
  int prog = static_cast<int>(::syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
  if (prog < 0)
    throw sys_error(name_ +
                    ": loading the queue-steering program that cooperative mode needs with "
                    "workers (bpf; [tun] queues = 1 does without)");
  // The device keeps its own reference to the program.
  int rc = ::ioctl(queues_.at(0), TUNSETSTEERINGEBPF, &prog);
  int saved = errno;
  ::close(prog);
  errno = saved;
  if (rc < 0) throw sys_error(name_ + ": TUNSETSTEERINGEBPF");
}

void TunDevice::use_queue(size_t q) {
  for (size_t i = 0; i < queues_.size(); ++i)
    if (i != q) ::close(queues_[i]);
  fd_ = queues_.at(q);
  queues_ = {fd_};
}

// The kernel's count of packets it could not queue for us: the transmit
// drops of the device in /proc/self/net/dev, which shows our namespace.
uint64_t TunDevice::queue_drops() const {
  std::ifstream dev("/proc/self/net/dev");
  std::string line;
  while (std::getline(dev, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    size_t start = line.find_first_not_of(' ');
    if (line.compare(start, colon - start, name_) != 0) continue;
    std::istringstream fields(line.substr(colon + 1));
    uint64_t v = 0;
    for (int i = 0; i < 12 && fields >> v; ++i) {
    }
    return v;  // the 12th number: transmit drops
  }
  return 0;
}

namespace {

// struct virtio_net_hdr, which C++ cannot include (a member is named
// "class"); host byte order, as the TUN driver uses on little-endian hosts.
struct VnetHeader {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len, gso_size, csum_start, csum_offset;
};
static_assert(sizeof(VnetHeader) == 10);
constexpr uint8_t kNeedsChecksum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
constexpr uint8_t kDataValid = 2;      // VIRTIO_NET_HDR_F_DATA_VALID
constexpr uint8_t kGsoTcp4 = 1, kGsoTcp6 = 4;

// A partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field holds the
// pseudo-header sum; the sum from csum_start to the end completes it.
// False for offsets outside the packet (then lwIP checks, and drops it).
bool complete_checksum(const VnetHeader& h, std::span<uint8_t> packet) {
  size_t start = h.csum_start, field = start + h.csum_offset;
  if (field + 2 > packet.size()) return false;
  uint16_t sum = vpm::finish(vpm::sum_words(packet.subspan(start)));
  if (sum == 0 && h.csum_offset == 6) sum = 0xffff;  // UDP: 0 means "no checksum"
  vpm::store16(&packet[field], sum);
  return true;
}

// The virtio header that has the kernel cut a TCP packet longer than the
// client's MSS into segments (TSO): the checksum becomes partial (the field
// holds the pseudo-header sum, which the kernel completes per segment), and
// each segment carries a copy of the IP and TCP headers, so TCP options
// shorten its payload.
VnetHeader gso_header(std::span<uint8_t> packet, uint16_t mss) {
  VnetHeader h{};
  if (mss == 0 || packet.size() < 40) return h;
  bool v6 = packet[0] >> 4 == 6;
  size_t l4 = v6 ? 40 : (packet[0] & 0x0f) * 4u;  // the stack sends no IPv6 extension headers
  if ((v6 ? packet[6] : packet[9]) != 6 || l4 + 20 > packet.size()) return h;
  size_t tcp_header = (packet[l4 + 12] >> 4) * 4u;
  size_t header = l4 + tcp_header, options = tcp_header - 20;
  if (header > packet.size() || mss <= options || packet.size() - header <= mss - options)
    return h;  // fits in one segment
  size_t tcp_length = packet.size() - l4;
  uint64_t pseudo =
      v6 ? vpm::sum_words(packet.subspan(8, 32)) : vpm::sum_words(packet.subspan(12, 8));
  pseudo += 6 + (tcp_length >> 16) + (tcp_length & 0xffff);
  vpm::store16(&packet[l4 + 16], vpm::fold(pseudo));
  h.flags = kNeedsChecksum;
  h.gso_type = v6 ? kGsoTcp6 : kGsoTcp4;
  h.hdr_len = static_cast<uint16_t>(header);
  h.gso_size = static_cast<uint16_t>(mss - options);
  h.csum_start = static_cast<uint16_t>(l4);
  h.csum_offset = 16;
  return h;
}

}  // namespace

size_t TunDevice::read(std::span<uint8_t> buffer, bool& verified) {
  VnetHeader h{};
  iovec iov[2] = {{&h, sizeof h}, {buffer.data(), buffer.size()}};
  int first = vnet_ ? 0 : 1;
  for (;;) {
    ssize_t n = ::readv(fd_, iov + first, 2 - first);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return 0;  // EAGAIN: nothing waiting
    verified = false;
    if (!vnet_) return static_cast<size_t>(n);
    if (static_cast<size_t>(n) < sizeof h) return 0;
    size_t len = static_cast<size_t>(n) - sizeof h;
    verified = (h.flags & kNeedsChecksum) ? complete_checksum(h, buffer.first(len))
                                          : (h.flags & kDataValid) != 0;
    return len;
  }
}

bool TunDevice::write(std::span<uint8_t> packet, uint16_t mss) {
  VnetHeader h{};
  if (vnet_) h = gso_header(packet, mss);
  iovec iov[2] = {{&h, sizeof h}, {packet.data(), packet.size()}};
  int first = vnet_ ? 0 : 1;
  size_t want = packet.size() + (vnet_ ? sizeof h : 0);
  for (;;) {
    ssize_t n = ::writev(fd_, iov + first, 2 - first);
    if (n == static_cast<ssize_t>(want)) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

size_t FakeDevice::read(std::span<uint8_t> buffer, bool& verified) {
  verified = false;
  if (inbound.empty()) return 0;
  auto p = std::move(inbound.front());
  inbound.pop_front();
  size_t n = std::min(p.size(), buffer.size());
  std::copy(p.begin(), p.begin() + static_cast<long>(n), buffer.begin());
  return n;
}

bool FakeDevice::write(std::span<uint8_t> packet, uint16_t mss) {
  written.emplace_back(packet.begin(), packet.end());
  written_mss.push_back(mss);
  return true;
}

}  // namespace tun
