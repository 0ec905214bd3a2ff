// Relays to registered instances (relays.hpp).
#include "tun/relays.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace tun {

using namespace vpm::appwire;

namespace {

// The loopback address of a family, as a socket address with `port`.
socklen_t loopback(bool ipv6, uint16_t port, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (ipv6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    a->sin6_port = htons(port);
    return sizeof *a;
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a->sin_port = htons(port);
  return sizeof *a;
}

}  // namespace

uint16_t port_of(const sockaddr_storage& ss) {
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(ss).sin6_port
                                        : reinterpret_cast<const sockaddr_in&>(ss).sin_port);
}

void Relays::remove(uint64_t id) {
  for (auto& [fd, r] : relays_)
    if (r.instance == id) r.instance = 0;
  instances_.erase(id);
}

int Relays::open(const std::string& app, vpm::Proto proto, const vpm::IpAddr& client,
                 uint16_t cport, const vpm::IpAddr& vaddr, uint16_t p1) {
  std::vector<std::pair<uint64_t, Instance*>> takers;
  for (auto& [id, i] : instances_) {
    const Bind& b = i.bind;
    if (i.dead || i.app != app || b.proto != proto || b.p1 != p1) continue;
    if (!is_wildcard(b.requested) && !is_loopback(b.requested) && b.requested != vaddr) continue;
    // The family its socket takes: AF_INET only IPv4 clients, AF_INET6
    // IPv6 ones and, unless IPV6_V6ONLY, IPv4 ones as mapped addresses.
    bool fits = client.is_v4() ? !b.ipv6 || !b.v6only : b.ipv6;
    if (fits) takers.push_back({id, &i});
  }
  for (size_t tried = 0; tried < takers.size(); ++tried) {
    auto [id, i] = takers[turn_[app]++ % takers.size()];
    sockaddr_storage ss;
    socklen_t len = loopback(i->bind.ipv6, i->bind.real_port, ss);
    int type = proto == vpm::Proto::tcp ? SOCK_STREAM : SOCK_DGRAM;
    int fd = ::socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    // The kernel picks our port as for any connect (cheaper than bind(0),
    // which may not share a port); the instance's library waits for the
    // slot if it accepts before it is written (preload.cpp).
    sockaddr_storage local{};
    socklen_t llen = sizeof local;
    if ((::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno != EINPROGRESS) ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) < 0) {
      ++refusals_;
      ++i->refusals;  // its socket is closed: try the next
      ::close(fd);
      continue;
    }
    uint16_t lport = port_of(local);
    PeerTable& t = *i->table;
    t.set_relay(proto, i->bind.ipv6, lport, {true, client, cport, vaddr, p1, i->bind.real_port});
    if (proto == vpm::Proto::udp)
      t.index_udp(i->bind.ipv6, lport, client, cport, i->bind.real_port);
    relays_[fd] = {id, proto, i->bind.ipv6, lport, client, cport, i->table};
    ++i->relayed;
    ++i->open;
    return fd;
  }
  return -1;
}

uint64_t Relays::refused(int fd) {
  auto it = relays_.find(fd);
  if (it == relays_.end()) return 0;
  ++refusals_;
  auto found = instances_.find(it->second.instance);
  if (found == instances_.end()) return 0;
  Instance& i = found->second;
  ++i.refusals;
  // Its socket is closed: the registration outlived it in a process that
  // holds the registration but not the socket (one exec'd without it). A
  // socket that was just bound may not be listening yet; give it time.
  if (i.dead || monotonic_ms() - i.registered_ms <= kSettleMs) return 0;
  i.dead = true;
  return found->first;
}

void Relays::closing(int fd) {
  auto it = relays_.find(fd);
  if (it == relays_.end()) return;
  Relay& r = it->second;
  PeerTable& t = *r.table;
  if (r.proto == vpm::Proto::udp) {
    PeerSlot s = t.relay(r.proto, r.ipv6, r.local_port);
    t.unindex_udp(r.ipv6, r.local_port, r.client, r.cport, s.real_port);
  }
  t.clear_relay(r.proto, r.ipv6, r.local_port);
  if (auto found = instances_.find(r.instance); found != instances_.end() && found->second.open > 0)
    --found->second.open;
  relays_.erase(it);
}

}  // namespace tun
