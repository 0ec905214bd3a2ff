// The library socket and the registered instances of exec apps (instances.hpp).
#include "tun/instances.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

#include "tun/control.hpp"
#include "tun/coop.hpp"
#include "tun/fd_passing.hpp"

namespace tun {

using namespace vpm::appwire;

uint64_t monotonic_ms();

struct InstanceRegistry::AppTable {
  int memfd = -1;
  void* map = nullptr;
  PeerTable table{{}};
  bool sealed = false;
  ~AppTable() {
    if (map) ::munmap(map, PeerTable::kTableBytes);
    if (memfd >= 0) ::close(memfd);
  }
};

struct InstanceRegistry::Peer {
  int fd = -1;
  pid_t pid = 0;
  uid_t uid = 0;
  uint64_t since_ms = 0;
  std::string app;  // set by a Hello taken
  std::string command;
  AppTable* table = nullptr;
  uint64_t id = 0;          // tells a peer from a later one on the same fd
  bool dialing = false;     // a Dial taken: its answer ends the connection
  bool registered = false;  // a Bind taken: an instance in relays_, of this id
  bool dead = false;        // a worker found its port refusing: dropped at the next expire()
  Bind bind;
};

namespace {

vpm::Endpoint endpoint_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET6) {
    auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    auto addr = vpm::IpAddr::v6(a.sin6_addr.s6_addr);
    // A dual-stack socket bound for IPv4 says so with a mapped address.
    if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) addr = vpm::IpAddr::v4(a.sin6_addr.s6_addr + 12);
    return {addr, ntohs(a.sin6_port)};
  }
  auto& a = reinterpret_cast<const sockaddr_in&>(ss);
  return {vpm::IpAddr::v4(reinterpret_cast<const uint8_t*>(&a.sin_addr)), ntohs(a.sin_port)};
}

// What a program sent as its command line, fit for a log line or a table.
std::string printable(std::string s) {
  for (char& ch : s)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
  return s;
}

}  // namespace

InstanceRegistry::InstanceRegistry(const std::string& path, stack::IoLoop& io,
                                   std::function<const vpm::Config&()> config)
    : path_(path),
      io_(io),
      config_(std::move(config)),
      fd_(listen_unix(path, SOCK_SEQPACKET, 0666, "library socket", "[vpm] app_socket")),
      daemon_uid_(::geteuid()) {
  io_.watch(fd_, EPOLLIN, [this](uint32_t) { accept_peers(); });
}

InstanceRegistry::~InstanceRegistry() {
  while (!peers_.empty()) drop(peers_.begin()->first);
  io_.unwatch(fd_);
  ::close(fd_);
  ::unlink(path_.c_str());
}

void InstanceRegistry::accept_peers() {
  for (;;) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    size_t waiting = 0;
    bool known = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    for (auto& [other, p] : peers_) waiting += !p->registered && !p->dialing && p->uid == cred.uid;
    if (!known || peers_.size() >= kMaxPeers || waiting >= kMaxUnregisteredPerUser) {
      ++counters_.peers_dropped;
      if (log_.take())
        spdlog::info("library socket: pid {} uid {} turned away: {}", cred.pid, cred.uid,
                     !known ? "no peer credentials"
                     : peers_.size() >= kMaxPeers
                         ? "as many connections as it takes"
                         : std::to_string(waiting) + " connections of that uid not registered");
      ::close(fd);
      continue;
    }
    auto p = std::make_unique<Peer>();
    p->fd = fd;
    p->pid = cred.pid;
    p->uid = cred.uid;
    p->since_ms = monotonic_ms();
    p->id = ++next_peer_;
    peers_[fd] = std::move(p);
    io_.watch(fd, EPOLLIN, [this, fd](uint32_t) { serve(fd); });
  }
}

void InstanceRegistry::serve(int fd) {
  auto it = peers_.find(fd);
  if (it == peers_.end()) return;
  Peer& p = *it->second;
  uint8_t buf[kMaxMessage + 1];
  std::vector<int> fds;
  bool cut = false;
  ssize_t n = recv_with_fds(fd, buf, fds, MSG_DONTWAIT, &cut);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  // Descriptors passed are closed here only (bind() and dial() read them).
  auto close_fds = [&] {
    for (int f : fds) ::close(f);
  };
  if (n <= 0) {  // the process (and every process it shared the socket with) is gone
    close_fds();
    drop(fd);
    return;
  }
  std::string why;
  auto m = cut ? std::nullopt : decode({buf, static_cast<size_t>(n)}, &why);
  const auto* h = m ? std::get_if<Hello>(&*m) : nullptr;
  const auto* b = m ? std::get_if<Bind>(&*m) : nullptr;
  const auto* d = m ? std::get_if<Dial>(&*m) : nullptr;
  if (h && p.app.empty() && fds.empty()) {
    hello(p, *h);
  } else if (b && p.table && !p.registered && fds.size() == 1) {
    bind(p, *b, fds[0]);
  } else if (d && p.app.empty() && fds.size() == 1) {
    dial(p, *d, fds[0]);
  } else {
    // A message out of its turn, malformed, or with the wrong descriptors:
    // the library never sends those.
    ++counters_.bad_messages;
    if (log_.take())
      spdlog::info("library socket: pid {} uid {}: {}; closed", p.pid, p.uid,
                   !m ? "malformed message (" + (why.empty() ? "truncated" : why) + ")"
                      : "unexpected message");
    close_fds();
    drop(fd);
    return;
  }
  close_fds();
}

const vpm::AppConfig* InstanceRegistry::live_app(const std::string& name) const {
  for (const auto& a : config().apps)
    if (a.name == name && !a.draining) return &a;
  return nullptr;
}

std::vector<ListenPort> InstanceRegistry::listens_of(const vpm::AppConfig* app) {
  std::vector<ListenPort> out;
  if (app)
    for (auto& l : app->listen) out.push_back({l.proto, l.at.addr, l.at.port});
  return out;
}

// The app a program under `vpmtun exec` names, if its peer's uid may run it.
const vpm::AppConfig* InstanceRegistry::app_for(const Peer& p, const std::string& name,
                                                Status& status, std::string& reason) const {
  const vpm::AppConfig* app = live_app(name);
  status = Status::ok;
  if (!app) {
    status = Status::unknown_app;
    reason = "no app '" + name + "' in " + config().file;
  } else if (!vpm::runs_programs(*app)) {
    status = Status::not_exec;
    reason = "app '" + name + "' is not run by programs (set serve = \"exec\", or remote, in " +
             config().file + ")";
  } else if (!allowed(*app, p.uid)) {
    std::string list;
    for (auto& u : app->users) list += (list.empty() ? "" : ", ") + u;
    status = Status::not_allowed;
    reason = "uid " + std::to_string(p.uid) + " may not run instances of app '" + name +
             "' (its users are " + (list.empty() ? "the daemon's user and root" : list) + ")";
  }
  return status == Status::ok ? app : nullptr;
}

void InstanceRegistry::hello(Peer& p, const Hello& h) {
  Welcome w;
  const vpm::AppConfig* app = app_for(p, h.app, w.status, w.reason);
  AppTable* table = app ? table_for(app->name) : nullptr;
  if (app && (!table || !seal(*table)))
    w = {Status::full, "the daemon could not make the app's peer table", {}, {}};
  if (w.status != Status::ok) {
    ++counters_.refused;
    if (log_.take())
      spdlog::info("library socket: pid {} uid {} refused: {}", p.pid, p.uid, w.reason);
    send(p, w);
    drop(p.fd);
    return;
  }
  w.listens = listens_of(app);
  for (auto& r : app->remote) w.remotes.push_back({vpm::Proto::tcp, r.addr, r.port});
  p.app = app->name;
  p.command = printable(h.command);
  p.table = table;
  if (!send(p, w, table->memfd)) drop(p.fd);
}

void InstanceRegistry::bind(Peer& p, const Bind& b, int sock) {
  // The socket itself says what it is; the message must agree.
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  sockaddr_storage ss{};
  socklen_t slen = sizeof ss;
  ::getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof type;
  ::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len);
  bool ipv6 = domain == AF_INET6;
  bool named =
      ::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &slen) == 0 && ss.ss_family == domain;
  vpm::Proto proto = type == SOCK_DGRAM ? vpm::Proto::udp : vpm::Proto::tcp;
  bool loop = named &&
              (ipv6 ? IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<sockaddr_in6&>(ss).sin6_addr)
                    : reinterpret_cast<sockaddr_in&>(ss).sin_addr.s_addr == htonl(INADDR_LOOPBACK));
  Bound answer;
  const vpm::AppConfig* app = live_app(p.app);
  std::vector<ListenPort> listens = listens_of(app);
  if (!named || !loop || (type != SOCK_STREAM && type != SOCK_DGRAM) || ipv6 != b.ipv6 ||
      proto != b.proto || port_of(ss) != b.real_port || b.real_port == 0) {
    answer = {Status::bad_message, "the socket passed is not the loopback socket the Bind names"};
    ++counters_.bad_messages;
  } else if (!app || !takes_bind(listens, b.proto, b.requested, b.p1)) {
    answer = {Status::not_listened, "app '" + p.app + "' does not listen on " +
                                        vpm::Endpoint{b.requested, b.p1}.str() + "/" +
                                        vpm::proto_name(b.proto)};
    ++counters_.refused;
  }
  if (answer.status != Status::ok) {
    if (log_.take())
      spdlog::info("library socket: pid {} ({}) bind refused: {}", p.pid, p.command, answer.reason);
    send(p, answer);
    drop(p.fd);
    return;
  }
  p.registered = true;
  // b.v6only is the program's own setting: the kernel's now says yes, as
  // it does for every socket bound to one IPv6 address (::1).
  p.bind = b;
  p.table->table.set_bind(b.proto, b.ipv6, b.real_port,
                          {true, b.requested, 0, {}, b.p1, b.real_port});
  Instance instance{p.app, b, monotonic_ms(), &p.table->table};
  // Workers hear of it before the program does, so every one of them has
  // it by the time the program listens.
  if (watcher_) watcher_(p.id, &instance);
  relays_.add(p.id, std::move(instance));
  ++counters_.registered;
  spdlog::info("app {}: instance pid {} ({}) on {}/{} (real port {})", p.app, p.pid, p.command,
               vpm::Endpoint{b.requested, b.p1}.str(), vpm::proto_name(b.proto), b.real_port);
  if (!send(p, Bound{})) drop(p.fd);
}

void InstanceRegistry::dial(Peer& p, const Dial& d, int sock) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  bool named = ::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &len) == 0;
  Dialed answer;
  const vpm::AppConfig* app = app_for(p, d.app, answer.status, answer.reason);
  if (!app) {
    ++counters_.refused;
  } else if (!named || endpoint_of(ss) != d.client) {
    answer = {Status::bad_message, "the socket passed is not bound to the Dial's client", 0};
    ++counters_.bad_messages;
  } else if (!app || !coop_ ||
             std::find(app->remote.begin(), app->remote.end(), d.server) == app->remote.end()) {
    answer = {Status::not_remote, d.server.str() + " is not a remote of app '" + d.app + "'", 0};
    ++counters_.refused;
  }
  if (answer.status != Status::ok) {
    if (log_.take())
      spdlog::info("library socket: pid {} ({}) connect refused: {}", p.pid, p.command,
                   answer.reason);
    send(p, answer);
    drop(p.fd);
    return;
  }
  p.app = app->name;
  p.dialing = true;
  coop_->dial(d.client, d.server, app->aid, [this, fd = p.fd, id = p.id](const DialResult& r) {
    auto it = peers_.find(fd);
    if (it == peers_.end() || it->second->id != id) return;  // the program gave up
    static constexpr Status kStatus[] = {Status::ok, Status::refused, Status::unreachable,
                                         Status::timed_out};
    send(*it->second, Dialed{kStatus[r.status], r.reason, r.p2});
    drop(fd);
  });
}

bool InstanceRegistry::send(Peer& p, const Message& m, int fd_to_pass) {
  // One small datagram to a peer that just wrote: its buffer has room,
  // unless it is a program that never reads (then it loses its registration).
  return send_with_fd(p.fd, encode(m), fd_to_pass, MSG_DONTWAIT);
}

void InstanceRegistry::drop(int fd) {
  auto it = peers_.find(fd);
  if (it == peers_.end()) return;
  Peer& p = *it->second;
  if (p.registered) {
    p.table->table.clear_bind(p.bind.proto, p.bind.ipv6, p.bind.real_port);
    spdlog::info("app {}: instance pid {} ({}) on {}/{} is gone", p.app, p.pid, p.command,
                 vpm::Endpoint{p.bind.requested, p.bind.p1}.str(), vpm::proto_name(p.bind.proto));
  }
  if (p.registered) {
    relays_.remove(p.id);
    if (watcher_) watcher_(p.id, nullptr);
  }
  io_.unwatch(fd);
  ::close(fd);
  peers_.erase(it);
}

InstanceRegistry::AppTable* InstanceRegistry::table_for(const std::string& app) {
  auto& slot = tables_[app];
  if (slot) return slot.get();
  auto t = std::make_unique<AppTable>();
  t->memfd = ::memfd_create(("vpmtun-peers-" + app).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (t->memfd < 0 || ::ftruncate(t->memfd, PeerTable::kTableBytes) < 0) return nullptr;
  t->map = ::mmap(nullptr, PeerTable::kTableBytes, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
  if (t->map == MAP_FAILED) {
    t->map = nullptr;
    return nullptr;
  }
  t->table = PeerTable({static_cast<uint8_t*>(t->map), PeerTable::kTableBytes});
  slot = std::move(t);
  return slot.get();
}

bool InstanceRegistry::seal(AppTable& t) {
  // A program could otherwise shrink the file under our mapping (SIGBUS
  // here) or map it writable and mislead its fellow instances. Mappings
  // made before (the workers') stay writable.
  if (!t.sealed)
    t.sealed = ::fcntl(t.memfd, F_ADD_SEALS,
                       F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0;
  return t.sealed;
}

std::vector<std::pair<std::string, int>> InstanceRegistry::prepare(const vpm::Config& cfg) {
  std::vector<std::pair<std::string, int>> fresh;
  for (auto& app : cfg.apps)
    if (vpm::runs_programs(app) && !tables_.count(app.name))
      if (AppTable* t = table_for(app.name)) fresh.push_back({app.name, t->memfd});
  return fresh;
}

void InstanceRegistry::seal_all() {
  for (auto& [app, t] : tables_)
    if (t) seal(*t);
}

bool InstanceRegistry::allowed(const vpm::AppConfig& app, uid_t uid) const {
  if (uid == 0) return true;
  if (app.users.empty()) return uid == daemon_uid_;
  for (const auto& u : app.users) {
    uid_t want = 0;
    auto [end, ec] = std::from_chars(u.data(), u.data() + u.size(), want);
    if (ec == std::errc() && end == u.data() + u.size()) {
      if (want == uid) return true;
    } else if (passwd* pw = ::getpwnam(u.c_str()); pw && pw->pw_uid == uid) {
      return true;
    }
  }
  return false;
}

int InstanceRegistry::open(uint16_t app, vpm::Proto proto, const vpm::IpAddr& client,
                           uint16_t cport, const vpm::IpAddr& vaddr, uint16_t p1) {
  return relays_.open(config().apps[app].name, proto, client, cport, vaddr, p1);
}

void InstanceRegistry::refused(int fd) { dead(relays_.refused(fd)); }

void InstanceRegistry::closing(int fd) { relays_.closing(fd); }

void InstanceRegistry::dead(uint64_t id) {
  for (auto& [fd, p] : peers_)
    if (id && p->id == id) p->dead = true;
}

std::map<std::string, PeerTable*> InstanceRegistry::tables() const {
  std::map<std::string, PeerTable*> out;
  for (auto& [app, t] : tables_)
    if (t) out[app] = &t->table;
  return out;
}

void InstanceRegistry::expire(uint64_t now_ms) {
  std::vector<int> gone;
  for (auto& [fd, p] : peers_)
    // since_ms may be later than now_ms: accepted after the loop read its clock.
    if (p->dead || (!p->registered && now_ms > p->since_ms + kHelloMs)) gone.push_back(fd);
  for (int fd : gone) {
    ++counters_.peers_dropped;
    drop(fd);
  }
}

std::vector<InstanceInfo> infos_of(const Relays& relays) {
  std::vector<InstanceInfo> out;
  for (auto& [id, i] : relays.instances()) {
    InstanceInfo info;
    info.id = id;
    info.app = i.app;
    info.proto = i.bind.proto;
    info.bound = {i.bind.requested, i.bind.p1};
    info.real = {i.bind.ipv6 ? *vpm::IpAddr::parse("::1") : *vpm::IpAddr::parse("127.0.0.1"),
                 i.bind.real_port};
    info.relayed = i.relayed;
    info.open = i.open;
    info.refusals = i.refusals;
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<InstanceInfo> InstanceRegistry::instances() const {
  std::unordered_map<uint64_t, const Peer*> by_id;
  for (auto& [fd, p] : peers_) by_id[p->id] = p.get();
  std::vector<InstanceInfo> out = infos_of(relays_);
  for (auto& i : out) {
    const Peer& p = *by_id.at(i.id);
    i.pid = p.pid;
    i.uid = p.uid;
    i.command = p.command;
  }
  return out;
}

}  // namespace tun
