// Cooperative mode, the client's VPM: negotiating for programs' connections (coop.hpp).
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tun/coop.hpp"

namespace tun {

using namespace vpm::coop;

namespace {

constexpr size_t kMaxUnread = 64 * 1024;  // a server that says more is not negotiating

socklen_t sockaddr_of(const vpm::Endpoint& e, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (e.addr.is_v4()) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    std::memcpy(&a->sin_addr, e.addr.bytes.data() + 12, 4);
    a->sin_port = htons(e.port);
    return sizeof *a;
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
  a->sin6_family = AF_INET6;
  std::memcpy(&a->sin6_addr, e.addr.bytes.data(), 16);
  a->sin6_port = htons(e.port);
  return sizeof *a;
}

}  // namespace

// One TCP connection to a server's vaddr:p1, carrying every negotiation with it.
struct CoopClient::Link {
  vpm::Endpoint server;
  int fd = -1;
  bool connected = false;
  std::vector<uint8_t> out, in;
  std::map<Nonce, Dial> dials;  // asked, not answered yet
  uint64_t last_ms = 0;
};

CoopClient::CoopClient(stack::IoLoop& io, std::vector<uint8_t> key)
    : io_(io), key_(std::move(key)), nonces_(1 << 18) {}

CoopClient::~CoopClient() {
  for (auto& [server, l] : links_) {
    io_.unwatch(l->fd);
    ::close(l->fd);
  }
}

size_t CoopClient::in_flight() const {
  size_t n = 0;
  for (auto& [server, l] : links_) n += l->dials.size();
  return n;
}

CoopClient::Link* CoopClient::link_to(const vpm::Endpoint& server) {
  if (auto it = links_.find(server); it != links_.end()) return it->second.get();
  sockaddr_storage ss;
  socklen_t len = sockaddr_of(server, ss);
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno != EINPROGRESS) {
    int err = errno;
    ::close(fd);
    errno = err;
    return nullptr;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto l = std::make_unique<Link>();
  l->server = server;
  l->fd = fd;
  l->last_ms = monotonic_ms();
  Link* raw = l.get();
  links_[server] = std::move(l);
  ++counters_.links_opened;
  watch(*raw, EPOLLIN | EPOLLOUT);
  return raw;
}

void CoopClient::dial(const vpm::Endpoint& client, const vpm::Endpoint& server, uint32_t aid,
                      Done done) {
  ++counters_.dials;
  Dial d{Ask{fresh_header(wall_ms()), client, server, vpm::Proto::tcp}, aid, std::move(done),
         monotonic_ms() + kDialMs};
  if (in_flight() >= kMaxDials)
    return finish(d, {DialResult::refused, 0, "too many negotiations in flight"});
  Link* l = link_to(server);
  if (!l)
    return finish(d, {DialResult::unreachable, 0,
                      "cannot reach " + server.str() + ": " + std::strerror(errno)});
  Nonce n = d.ask.h.nonce;
  Ask ask = d.ask;
  l->dials.emplace(n, std::move(d));
  send(*l, ask);
}

void CoopClient::send(Link& l, const Message& m) {
  auto sealed = seal(m, key_);
  l.out.insert(l.out.end(), sealed.begin(), sealed.end());
  l.last_ms = monotonic_ms();
  if (l.connected) flush(l);
}

void CoopClient::flush(Link& l) {
  while (!l.out.empty()) {
    ssize_t n = ::send(l.fd, l.out.data(), l.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      l.out.erase(l.out.begin(), l.out.begin() + n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return watch(l, EPOLLIN | EPOLLOUT);
    return broken(l, std::string("sending: ") + std::strerror(errno));
  }
  watch(l, EPOLLIN);
}

// Events of the link's socket reach ready() while that link lives.
void CoopClient::watch(Link& l, uint32_t events) {
  io_.watch(l.fd, events, [this, server = l.server, fd = l.fd](uint32_t got) {
    auto it = links_.find(server);
    if (it != links_.end() && it->second->fd == fd) ready(*it->second, got);
  });
}

void CoopClient::ready(Link& l, uint32_t events) {
  if (!l.connected) {
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(l.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return broken(l, std::string("connecting: ") + std::strerror(err));
    if (!(events & (EPOLLOUT | EPOLLIN))) return;
    l.connected = true;
    flush(l);
    return;  // flush() may have ended the link; what it has to read comes again
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) return heard(l);
  if (events & EPOLLOUT) flush(l);
}

void CoopClient::heard(Link& l) {
  uint8_t buf[16384];
  for (;;) {
    ssize_t n = ::recv(l.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return broken(l, "the server closed the negotiation (another key?)");
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      return broken(l, std::string("reading: ") + std::strerror(errno));
    }
    l.in.insert(l.in.end(), buf, buf + n);
    if (l.in.size() > kMaxUnread) return broken(l, "the server says more than it was asked");
  }
  uint64_t now = wall_ms();
  size_t at = 0;
  std::string fault;  // what ends the link, once the answers taken are out
  std::vector<std::pair<Dial, DialResult>> done;
  while (fault.empty()) {
    std::span<const uint8_t> rest(l.in.data() + at, l.in.size() - at);
    size_t size = frame_size(rest);
    if (size == kNotOurs) {
      fault = "the server does not speak the negotiation";
      break;
    }
    if (size == 0 || size > rest.size()) break;
    at += size;
    std::string why;
    auto m = open(rest.first(size), key_, now, &why);
    const Nonce* about = nullptr;
    if (m && std::holds_alternative<Offer>(*m)) about = &std::get<Offer>(*m).in_reply_to;
    if (m && std::holds_alternative<Refuse>(*m)) about = &std::get<Refuse>(*m).in_reply_to;
    if (!m)
      fault = "an answer that does not verify: " + why;
    else if (!nonces_.first_use(header_of(*m).nonce, header_of(*m).expiry_ms, now))
      fault = "an answer replayed";
    else if (!about)
      fault = "a message out of turn from the server";
    auto it = fault.empty() ? l.dials.find(*about) : l.dials.end();
    if (it == l.dials.end()) continue;  // for a dial that has timed out: its offer lapses
    Dial d = std::move(it->second);
    l.dials.erase(it);
    Reply r = answer(d.ask, *m, d.aid, fresh_header(now));
    if (r.send) {  // queued, and sent before the programs are told
      auto sealed = seal(*r.send, key_);
      l.out.insert(l.out.end(), sealed.begin(), sealed.end());
      l.last_ms = monotonic_ms();
    }
    DialResult result{DialResult::ok, 0, ""};
    if (r.outcome == Outcome::negotiated)
      result.p2 = std::get<Offer>(*m).p2;
    else
      result = {DialResult::refused, 0,
                r.outcome == Outcome::aid_mismatch
                    ? "aid " + std::to_string(d.aid) + " is not among those offered"
                    : std::string("the server refused: ") + outcome_name(r.outcome)};
    done.emplace_back(std::move(d), std::move(result));
  }
  l.in.erase(l.in.begin(), l.in.begin() + static_cast<ptrdiff_t>(at));
  // The Acks leave before the programs are told to connect, so that their
  // SYNs do not overtake them (the server holds one that does).
  vpm::Endpoint server = l.server;
  int fd = l.fd;
  if (!l.out.empty()) flush(l);
  auto still = links_.find(server);  // flush() may have ended the link
  if (!fault.empty() && still != links_.end() && still->second->fd == fd)
    broken(*still->second, fault);
  for (auto& [dial, result] : done) finish(dial, result);
}

void CoopClient::broken(Link& l, const std::string& why) {
  std::map<Nonce, Dial> dials = std::move(l.dials);
  vpm::Endpoint server = l.server;
  io_.unwatch(l.fd);
  ::close(l.fd);
  links_.erase(server);  // `l` is gone
  if (log_.take()) spdlog::info("cooperative: link to {} ended: {}", server.str(), why);
  uint64_t now = monotonic_ms();
  for (auto& [nonce, d] : dials) {
    // Once more on a new link: the server may have restarted.
    if (!d.retried && now < d.deadline_ms) {
      Link* fresh = link_to(server);
      if (fresh) {
        d.retried = true;
        d.ask.h = fresh_header(wall_ms());
        Ask ask = d.ask;
        fresh->dials.emplace(ask.h.nonce, std::move(d));
        send(*fresh, ask);
        continue;
      }
    }
    finish(d, {DialResult::unreachable, 0, "negotiating with " + server.str() + ": " + why});
  }
}

void CoopClient::finish(Dial& d, DialResult r) {
  switch (r.status) {
    case DialResult::ok:
      ++counters_.negotiated;
      break;
    case DialResult::refused:
      ++counters_.refused;
      break;
    case DialResult::unreachable:
      ++counters_.unreachable;
      break;
    case DialResult::timed_out:
      ++counters_.timed_out;
      break;
  }
  if (r.status != DialResult::ok && log_.take())
    spdlog::info("cooperative: {} > {} (aid {}) refused: {}", d.ask.client.str(),
                 d.ask.server.str(), d.aid, r.reason);
  if (d.done) d.done(r);
}

void CoopClient::expire(uint64_t now_ms) {
  std::vector<vpm::Endpoint> idle;
  for (auto& [server, l] : links_) {
    for (auto it = l->dials.begin(); it != l->dials.end();) {
      if (now_ms < it->second.deadline_ms) {
        ++it;
        continue;
      }
      Dial d = std::move(it->second);
      it = l->dials.erase(it);
      finish(d, {DialResult::timed_out, 0, "no answer from " + server.str() + " in time"});
    }
    // last_ms may be later than now_ms: used after the loop read its clock.
    if (l->dials.empty() && now_ms > l->last_ms + kLinkIdleMs) idle.push_back(server);
  }
  for (auto& server : idle) {
    io_.unwatch(links_[server]->fd);
    ::close(links_[server]->fd);
    links_.erase(server);
  }
}

}  // namespace tun
