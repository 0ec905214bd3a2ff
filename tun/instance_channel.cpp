// The instance channel between a supervisor's registry and its workers'
// relays (instance_channel.hpp).
#include "tun/instance_channel.hpp"

#include <fmt/core.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>

#include "tun/fd_passing.hpp"
#include "tun/instances.hpp"

namespace tun {

using vpm::appwire::PeerTable;

namespace {

constexpr size_t kMaxMessage = 512;

std::span<const uint8_t> bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::vector<std::string_view> words_of(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t at = 0; at < s.size();) {
    size_t end = std::min(s.find(' ', at), s.size());
    out.push_back(s.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

template <typename T>
bool number(std::string_view w, T& v) {
  auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), v);
  return ec == std::errc() && end == w.data() + w.size();
}

// One message, and the descriptors it carried; n <= 0 as recvmsg says.
struct Heard {
  ssize_t n = 0;
  std::vector<std::string_view> words;
  std::vector<int> fds;
  uint8_t buf[kMaxMessage];
};

void receive(int channel, Heard& h) {
  bool cut = false;
  h.fds.clear();
  h.n = recv_with_fds(channel, h.buf, h.fds, MSG_DONTWAIT, &cut);
  h.words = h.n > 0 && !cut
                ? words_of({reinterpret_cast<const char*>(h.buf), static_cast<size_t>(h.n)})
                : std::vector<std::string_view>{};
}

}  // namespace

struct RemoteInstances::Mapping {
  void* map = nullptr;
  PeerTable table{{}};
  ~Mapping() {
    if (map) ::munmap(map, PeerTable::kTableBytes);
  }
};

RemoteInstances::RemoteInstances(const InstanceFeed& feed, stack::IoLoop& io,
                                 std::function<const vpm::Config&()> config)
    : channel_(feed.channel), io_(io), config_(std::move(config)), tables_(feed.tables) {
  for (auto& [id, i] : feed.instances) relays_.add(id, i);
  io_.watch(channel_, EPOLLIN, [this](uint32_t) { hear(); });
}

RemoteInstances::~RemoteInstances() {
  if (channel_open_) io_.unwatch(channel_);
  ::close(channel_);
}

int RemoteInstances::open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client, uint16_t cport,
                          const vpm::IpAddr& vaddr, uint16_t p1) {
  const std::string& name = config_().apps[app].name;
  int fd = relays_.open(name, proto, client, cport, vaddr, p1);
  if (fd >= 0) return fd;
  // A registration may be waiting in the channel: told before the program
  // could listen, perhaps not read yet.
  hear();
  return relays_.open(name, proto, client, cport, vaddr, p1);
}

void RemoteInstances::refused(int fd) {
  if (uint64_t id = relays_.refused(fd))
    send_with_fd(channel_, bytes(fmt::format("d {}", id)), -1, MSG_DONTWAIT);
}

void RemoteInstances::closing(int fd) { relays_.closing(fd); }

void RemoteInstances::map_table(const std::string& app, int memfd) {
  auto m = std::make_unique<Mapping>();
  m->map = ::mmap(nullptr, PeerTable::kTableBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (m->map == MAP_FAILED) {
    m->map = nullptr;
    spdlog::error("instance channel: the peer table of app {} does not map: {}", app,
                  std::strerror(errno));
    return;
  }
  m->table = PeerTable({static_cast<uint8_t*>(m->map), PeerTable::kTableBytes});
  tables_[app] = &m->table;
  mapped_.push_back(std::move(m));
}

void RemoteInstances::hear() {
  Heard h;
  for (;;) {
    receive(channel_, h);
    if (h.n < 0 && errno == EINTR) continue;
    if (h.n == 0 && channel_open_) {  // the supervisor is gone (and so will this worker be)
      io_.unwatch(channel_);
      channel_open_ = false;
    }
    if (h.n <= 0) return;
    const auto& w = h.words;
    uint64_t id = 0, since = 0;
    uint16_t p1 = 0, real = 0;
    auto addr = w.size() == 10 ? vpm::IpAddr::parse(w[6]) : std::nullopt;
    if (w.size() == 2 && w[0] == "t" && h.fds.size() == 1) {
      if (!tables_.count(std::string(w[1]))) map_table(std::string(w[1]), h.fds[0]);
    } else if (w.size() == 10 && w[0] == "+" && number(w[1], id) &&
               tables_.count(std::string(w[2])) && (w[3] == "tcp" || w[3] == "udp") &&
               (w[4] == "0" || w[4] == "1") && (w[5] == "0" || w[5] == "1") && addr &&
               number(w[7], p1) && number(w[8], real) && number(w[9], since)) {
      vpm::appwire::Bind b{w[3] == "tcp" ? vpm::Proto::tcp : vpm::Proto::udp,
                           w[4] == "1",
                           w[5] == "1",
                           *addr,
                           p1,
                           real};
      relays_.add(id, {std::string(w[2]), b, since, tables_[std::string(w[2])]});
    } else if (w.size() == 2 && w[0] == "-" && number(w[1], id)) {
      relays_.remove(id);
    } else if (log_.take()) {
      spdlog::error("instance channel: a message from the supervisor that does not read");
    }
    for (int fd : h.fds) ::close(fd);
  }
}

bool tell_table(int channel, const std::string& app, int memfd) {
  return send_with_fd(channel, bytes("t " + app), memfd, 0);
}

bool tell_instance(int channel, uint64_t id, const Instance* i) {
  std::string m =
      i ? fmt::format("+ {} {} {} {:d} {:d} {} {} {} {}", id, i->app,
                      vpm::proto_name(i->bind.proto), i->bind.ipv6, i->bind.v6only,
                      i->bind.requested.str(), i->bind.p1, i->bind.real_port, i->registered_ms)
        : fmt::format("- {}", id);
  return send_with_fd(channel, bytes(m), -1, 0);
}

bool serve_instance_channel(int channel, InstanceRegistry& registry, int owner) {
  Heard h;
  for (;;) {
    receive(channel, h);
    for (int fd : h.fds) ::close(fd);  // a worker passes none
    if (h.n < 0 && errno == EINTR) continue;
    if (h.n < 0) return errno == EAGAIN;
    if (h.n == 0) return false;
    uint64_t id = 0;
    if (h.words.size() == 2 && h.words[0] == "d" && number(h.words[1], id))
      registry.dead(id);
    else
      spdlog::error("instance channel of worker {}: a message that does not read", owner);
  }
}

}  // namespace tun
