// The application library's messages, bind rule and peer table (app_wire.hpp).
#include "vpm/app_wire.hpp"

#include <algorithm>
#include <cstring>

#include "vpm/wire_io.hpp"

namespace vpm::appwire {

const char* status_name(Status s) {
  switch (s) {
    case Status::ok:
      return "ok";
    case Status::unknown_app:
      return "unknown app";
    case Status::not_exec:
      return "app not served by programs";
    case Status::not_allowed:
      return "user not allowed";
    case Status::not_listened:
      return "port not listened on";
    case Status::bad_message:
      return "bad message";
    case Status::full:
      return "daemon full";
    case Status::not_remote:
      return "not a remote of the app";
    case Status::refused:
      return "refused";
    case Status::unreachable:
      return "unreachable";
    case Status::timed_out:
      return "timed out";
  }
  return "?";
}

namespace {

using wire::proto_of;
using wire::Reader;
using wire::Writer;

std::optional<Status> status_of(uint8_t v) {
  if (v > static_cast<uint8_t>(Status::timed_out)) return std::nullopt;
  return static_cast<Status>(v);
}

void put_ports(Writer& w, const std::vector<ListenPort>& ports) {
  size_t n = std::min(ports.size(), kMaxListens);
  w.u8(static_cast<uint8_t>(n));
  for (size_t i = 0; i < n; ++i) {
    w.u8(static_cast<uint8_t>(ports[i].proto));
    w.addr(ports[i].vaddr);
    w.u16(ports[i].p1);
  }
}

// False for more than kMaxListens or an unknown protocol.
bool get_ports(Reader& r, std::vector<ListenPort>& out) {
  size_t n = r.u8();
  if (n > kMaxListens) return false;
  for (size_t i = 0; i < n && !r.bad(); ++i) {
    auto proto = proto_of(r.u8());
    ListenPort l;
    l.vaddr = r.addr();
    l.p1 = r.u16();
    if (!proto) return false;
    l.proto = *proto;
    out.push_back(l);
  }
  return true;
}

}  // namespace

std::vector<uint8_t> encode(const Message& m) {
  Writer w;
  w.u8(kVersion);
  w.u8(static_cast<uint8_t>(m.index() + 1));  // Type follows the variant's order
  w.u16(0);                                   // body length, set below
  if (auto* h = std::get_if<Hello>(&m)) {
    w.str(h->app, kMaxName);
    w.str(h->command, kMaxCommand);
  } else if (auto* wl = std::get_if<Welcome>(&m)) {
    w.u8(static_cast<uint8_t>(wl->status));
    w.str(wl->reason, kMaxReason);
    put_ports(w, wl->listens);
    put_ports(w, wl->remotes);
  } else if (auto* b = std::get_if<Bind>(&m)) {
    w.u8(static_cast<uint8_t>(b->proto));
    w.u8(static_cast<uint8_t>((b->ipv6 ? 1 : 0) | (b->v6only ? 2 : 0)));
    w.addr(b->requested);
    w.u16(b->p1);
    w.u16(b->real_port);
  } else if (auto* bd = std::get_if<Bound>(&m)) {
    w.u8(static_cast<uint8_t>(bd->status));
    w.str(bd->reason, kMaxReason);
  } else if (auto* d = std::get_if<Dial>(&m)) {
    w.str(d->app, kMaxName);
    w.endpoint(d->client);
    w.endpoint(d->server);
  } else if (auto* dd = std::get_if<Dialed>(&m)) {
    w.u8(static_cast<uint8_t>(dd->status));
    w.str(dd->reason, kMaxReason);
    w.u16(dd->p2);
  }
  size_t body = w.out.size() - 4;
  w.out[2] = static_cast<uint8_t>(body >> 8);
  w.out[3] = static_cast<uint8_t>(body);
  return w.out;
}

std::optional<Message> decode(std::span<const uint8_t> bytes, std::string* why) {
  auto bad = [&](const char* reason) {
    if (why) *why = reason;
    return std::optional<Message>();
  };
  if (bytes.size() > kMaxMessage) return bad("message longer than 2048 bytes");
  Reader r(bytes);
  uint8_t version = r.u8(), type = r.u8();
  uint16_t body = r.u16();
  if (r.bad()) return bad("shorter than its 4-byte header");
  if (version != kVersion) return bad("unknown version");
  if (size_t{body} + 4 != bytes.size()) return bad("body length disagrees with the message");
  Message m;
  switch (static_cast<Type>(type)) {
    case Type::hello: {
      Hello h;
      h.app = r.str(kMaxName);
      h.command = r.str(kMaxCommand);
      m = h;
      break;
    }
    case Type::welcome: {
      Welcome w;
      auto st = status_of(r.u8());
      w.reason = r.str(kMaxReason);
      if (!get_ports(r, w.listens) || !get_ports(r, w.remotes))
        return bad("too many ports, or an unknown protocol");
      if (!st) return bad("unknown status");
      w.status = *st;
      m = w;
      break;
    }
    case Type::bind: {
      Bind b;
      auto proto = proto_of(r.u8());
      uint8_t flags = r.u8();
      b.requested = r.addr();
      b.p1 = r.u16();
      b.real_port = r.u16();
      if (!proto) return bad("unknown protocol");
      if (flags > 3) return bad("unknown flags");
      b.proto = *proto;
      b.ipv6 = flags & 1;
      b.v6only = flags & 2;
      m = b;
      break;
    }
    case Type::bound: {
      Bound b;
      auto st = status_of(r.u8());
      b.reason = r.str(kMaxReason);
      if (!st) return bad("unknown status");
      b.status = *st;
      m = b;
      break;
    }
    case Type::dial: {
      Dial d;
      d.app = r.str(kMaxName);
      d.client = r.endpoint();
      d.server = r.endpoint();
      m = d;
      break;
    }
    case Type::dialed: {
      Dialed d;
      auto st = status_of(r.u8());
      d.reason = r.str(kMaxReason);
      d.p2 = r.u16();
      if (!st) return bad("unknown status");
      d.status = *st;
      m = d;
      break;
    }
    default:
      return bad("unknown message type");
  }
  if (!r.done()) return bad("fields do not fill the body");
  return m;
}

std::string format_listens(const std::vector<ListenPort>& listens) {
  std::string out;
  for (auto& l : listens) {
    if (!out.empty()) out += ',';
    out += proto_name(l.proto);
    out += '/' + l.vaddr.str() + '/' + std::to_string(l.p1);
  }
  return out;
}

std::optional<std::vector<ListenPort>> parse_listens(std::string_view text) {
  std::vector<ListenPort> out;
  for (bool more = !text.empty(); more;) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    more = comma != std::string_view::npos;
    text = more ? text.substr(comma + 1) : std::string_view();
    size_t a = item.find('/'), b = item.rfind('/');
    if (a == std::string_view::npos || a == b || out.size() == kMaxListens) return std::nullopt;
    ListenPort l;
    std::string_view proto = item.substr(0, a), port = item.substr(b + 1);
    if (proto == "tcp")
      l.proto = Proto::tcp;
    else if (proto == "udp")
      l.proto = Proto::udp;
    else
      return std::nullopt;
    auto addr = IpAddr::parse(item.substr(a + 1, b - a - 1));
    if (!addr || port.empty() || port.size() > 5) return std::nullopt;
    uint32_t p = 0;
    for (char ch : port) {
      if (ch < '0' || ch > '9') return std::nullopt;
      p = p * 10 + static_cast<uint32_t>(ch - '0');
    }
    if (p == 0 || p > 65535) return std::nullopt;
    l.vaddr = *addr;
    l.p1 = static_cast<uint16_t>(p);
    out.push_back(l);
  }
  return out;
}

bool is_wildcard(const IpAddr& a) {
  static const IpAddr any6{}, any4 = IpAddr::v4(std::array<uint8_t, 4>{}.data());
  return a == any6 || a == any4;
}

bool is_loopback(const IpAddr& a) {
  static const uint8_t one6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return (a.is_v4() && a.bytes[12] == 127) || std::memcmp(a.bytes.data(), one6, 16) == 0;
}

bool takes_bind(const std::vector<ListenPort>& listens, Proto proto, const IpAddr& addr,
                uint16_t port) {
  bool any = is_wildcard(addr) || is_loopback(addr);
  return std::any_of(listens.begin(), listens.end(), [&](const ListenPort& l) {
    return l.proto == proto && l.p1 == port && (any || l.vaddr == addr);
  });
}

// ---- the peer table ----
//
// A slot: u32 sequence (odd while the daemon writes it), u8 valid, u8 pad,
// u16 port, u16 p1, u16 real port, 16 bytes address, 16 bytes vaddr, 4 pad.

uint8_t* PeerTable::slot(size_t table, Proto proto, bool ipv6, uint16_t port) const {
  size_t i = ((table * 2 + (proto == Proto::udp)) * 2 + ipv6) * kPorts + port;
  return bytes_.data() + i * kSlotBytes;
}

uint32_t* PeerTable::index_at(size_t i) const {
  return reinterpret_cast<uint32_t*>(bytes_.data() + 2 * 2 * 2 * kPorts * kSlotBytes +
                                     (i % kIndexSlots) * 4);
}

void PeerTable::write(uint8_t* p, const PeerSlot& s) {
  auto* seq = reinterpret_cast<uint32_t*>(p);
  uint32_t v = __atomic_load_n(seq, __ATOMIC_RELAXED);
  __atomic_store_n(seq, v + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  uint8_t body[kSlotBytes - 4] = {};
  body[0] = s.valid;
  for (auto [at, value] : {std::pair{2, s.port}, {4, s.p1}, {6, s.real_port}}) {
    body[at] = static_cast<uint8_t>(value >> 8);
    body[at + 1] = static_cast<uint8_t>(value);
  }
  std::memcpy(body + 8, s.addr.bytes.data(), 16);
  std::memcpy(body + 24, s.vaddr.bytes.data(), 16);
  for (size_t i = 0; i < sizeof body; ++i) __atomic_store_n(p + 4 + i, body[i], __ATOMIC_RELAXED);
  __atomic_store_n(seq, v + 2, __ATOMIC_RELEASE);
}

PeerSlot PeerTable::read(const uint8_t* p) const {
  auto* seq = reinterpret_cast<const uint32_t*>(p);
  uint8_t body[kSlotBytes - 4];
  for (int tries = 0; tries < 64; ++tries) {
    uint32_t before = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < sizeof body; ++i) body[i] = __atomic_load_n(p + 4 + i, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if ((before & 1) || __atomic_load_n(seq, __ATOMIC_RELAXED) != before) continue;
    PeerSlot s;
    s.valid = body[0] == 1;
    if (!s.valid) return s;
    s.port = static_cast<uint16_t>(body[2] << 8 | body[3]);
    s.p1 = static_cast<uint16_t>(body[4] << 8 | body[5]);
    s.real_port = static_cast<uint16_t>(body[6] << 8 | body[7]);
    std::memcpy(s.addr.bytes.data(), body + 8, 16);
    std::memcpy(s.vaddr.bytes.data(), body + 24, 16);
    return s;
  }
  return {};  // the writer kept it busy: as if empty
}

void PeerTable::set_relay(Proto proto, bool ipv6, uint16_t port, const PeerSlot& s) {
  write(slot(0, proto, ipv6, port), s);
}
void PeerTable::clear_relay(Proto proto, bool ipv6, uint16_t port) {
  write(slot(0, proto, ipv6, port), {});
}
PeerSlot PeerTable::relay(Proto proto, bool ipv6, uint16_t port) const {
  return usable() ? read(slot(0, proto, ipv6, port)) : PeerSlot{};
}
void PeerTable::set_bind(Proto proto, bool ipv6, uint16_t port, const PeerSlot& s) {
  write(slot(1, proto, ipv6, port), s);
}
void PeerTable::clear_bind(Proto proto, bool ipv6, uint16_t port) {
  write(slot(1, proto, ipv6, port), {});
}
PeerSlot PeerTable::bind(Proto proto, bool ipv6, uint16_t port) const {
  return usable() ? read(slot(1, proto, ipv6, port)) : PeerSlot{};
}

// The UDP index: each entry is 0 (never used), kTombstone, or 1 + L + 65536
// for an IPv6 relay. A lookup probes from the client's hash and checks each
// candidate against its relay slot.
namespace {
constexpr uint32_t kTombstone = 0xffffffff;
size_t udp_hash(const IpAddr& client, uint16_t cport, uint16_t real_port) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&](uint8_t b) { h = (h ^ b) * 1099511628211ull; };
  for (uint8_t b : client.bytes) mix(b);
  for (uint16_t v : {cport, real_port})
    mix(static_cast<uint8_t>(v >> 8)), mix(static_cast<uint8_t>(v));
  return static_cast<size_t>(h ^ (h >> 32));
}
uint32_t index_value(bool ipv6, uint16_t port) { return 1u + port + (ipv6 ? 65536u : 0u); }
}  // namespace

bool PeerTable::index_udp(bool ipv6, uint16_t port, const IpAddr& client, uint16_t cport,
                          uint16_t real_port) {
  size_t h = udp_hash(client, cport, real_port);
  for (size_t i = 0; i < kProbe; ++i) {
    uint32_t* e = index_at(h + i);
    uint32_t v = __atomic_load_n(e, __ATOMIC_RELAXED);
    // Workers write one table at once (tun/instance_channel.hpp): an entry is taken once.
    if ((v == 0 || v == kTombstone) &&
        __atomic_compare_exchange_n(e, &v, index_value(ipv6, port), false, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED))
      return true;
  }
  return false;
}

void PeerTable::unindex_udp(bool ipv6, uint16_t port, const IpAddr& client, uint16_t cport,
                            uint16_t real_port) {
  size_t h = udp_hash(client, cport, real_port);
  for (size_t i = 0; i < kProbe; ++i) {
    uint32_t* e = index_at(h + i);
    if (__atomic_load_n(e, __ATOMIC_RELAXED) == index_value(ipv6, port)) {
      __atomic_store_n(e, kTombstone, __ATOMIC_RELEASE);
      return;
    }
  }
}

uint16_t PeerTable::find_udp(bool ipv6, const IpAddr& client, uint16_t cport,
                             uint16_t real_port) const {
  if (!usable()) return 0;
  size_t h = udp_hash(client, cport, real_port);
  for (size_t i = 0; i < kProbe; ++i) {
    uint32_t v = __atomic_load_n(index_at(h + i), __ATOMIC_ACQUIRE);
    if (v == 0) return 0;
    if (v == kTombstone || (v > 65536) != ipv6) continue;
    auto port = static_cast<uint16_t>((v - 1) & 0xffff);
    PeerSlot s = relay(Proto::udp, ipv6, port);
    if (s.valid && s.addr == client && s.port == cport && s.real_port == real_port) return port;
  }
  return 0;
}

}  // namespace vpm::appwire
