// Port translation between the TUN side (p1) and the stack side (p2).
#include "vpm/engine.hpp"

namespace vpm {

namespace {

namespace tcpflag {
inline constexpr uint8_t fin = 0x01, syn = 0x02, rst = 0x04, ack = 0x10;
}

constexpr Result kPass{Verdict::passed, Drop::none, kNoApp};
constexpr Result kTranslated{Verdict::translated, Drop::none, kNoApp};
constexpr Result drop(Drop d) { return {Verdict::dropped, d, kNoApp}; }
constexpr Result refuse(Drop d) { return {Verdict::refused, d, kNoApp}; }

// A 16-bit word of covered data that changed, for an enclosing checksum.
struct WordEdit {
  uint16_t before, after;
};

// TCP: the checksum at offset 16 covers the pseudo-header and the whole
// segment, so a port change is folded into it (RFC 1624). In an ICMP-quoted
// header the checksum may not have been quoted: then only the port changes.
// Returns the number of edits written (port word, then checksum word).
int rewrite_tcp_port(uint8_t* l4, size_t avail, size_t port_at, uint16_t port, WordEdit* edits) {
  uint16_t old_port = load16(l4 + port_at);
  store16(l4 + port_at, port);
  edits[0] = {old_port, port};
  if (avail < 18) return 1;
  uint16_t old_sum = load16(l4 + 16);
  uint16_t sum = update16(old_sum, old_port, port);
  store16(l4 + 16, sum);
  edits[1] = {old_sum, sum};
  return 2;
}

// UDP: checksum at offset 6. Zero means "no checksum" over IPv4 and stays
// zero; over IPv6 zero is illegal and is left for the receiver to drop, as it
// would have. A sum that computes to zero is sent as 0xFFFF (RFC 768).
int rewrite_udp_port(uint8_t* l4, size_t avail, size_t port_at, uint16_t port, WordEdit* edits) {
  uint16_t old_port = load16(l4 + port_at);
  store16(l4 + port_at, port);
  edits[0] = {old_port, port};
  if (avail < 8) return 1;
  uint16_t old_sum = load16(l4 + 6);
  if (old_sum == 0) return 1;
  uint16_t sum = update16(old_sum, old_port, port);
  if (sum == 0) sum = 0xffff;
  store16(l4 + 6, sum);
  edits[1] = {old_sum, sum};
  return 2;
}

int rewrite_port(Proto proto, uint8_t* l4, size_t avail, bool dst, uint16_t port, WordEdit* edits) {
  size_t at = dst ? 2 : 0;
  return proto == Proto::tcp ? rewrite_tcp_port(l4, avail, at, port, edits)
                             : rewrite_udp_port(l4, avail, at, port, edits);
}

bool is_l4(uint8_t proto) { return proto == ipproto::tcp || proto == ipproto::udp; }
Proto to_proto(uint8_t proto) { return proto == ipproto::tcp ? Proto::tcp : Proto::udp; }

uint8_t tcp_flags(const PacketView& v) { return v.proto == ipproto::tcp ? v.l4_ptr()[13] : 0; }

FlowKey make_key(const IpAddr& client, uint16_t cport, const IpAddr& vaddr, uint16_t p1,
                 Proto proto) {
  FlowKey k;
  k.client = client;
  k.vaddr = vaddr;
  k.set_ports(cport, p1, static_cast<uint8_t>(proto));
  return k;
}

}  // namespace

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::translated:
      return "translated";
    case Verdict::passed:
      return "passed";
    case Verdict::dropped:
      return "dropped";
    case Verdict::refused:
      return "refused";
  }
  return "?";
}

Engine::Engine(const Config& cfg, Share share)
    : rules_(cfg),
      timeouts_(cfg.timeouts),
      per_connection_(cfg.vpm.allocation == Allocation::per_connection),
      queue_timeout_ms_(cfg.vpm.queue_timeout_ms),
      flows_(std::max<uint32_t>(1, cfg.vpm.max_flows / share.count)),
      share_(share),
      app_counters_(cfg.apps.size()) {
  if (per_connection_)
    for (auto& l : rules_.listens()) pools_.push_back(pool_of(l));
}

// parse_config gives every slice at least one port per worker.
PortPool Engine::pool_of(const Listen& l) const {
  size_t size = size_t{l.slice_hi} - l.slice_lo + 1;
  size_t lo = l.slice_lo + size * share_.index / share_.count;
  size_t hi = l.slice_lo + size * (share_.index + 1) / share_.count - 1;
  return PortPool(static_cast<uint16_t>(lo), static_cast<uint16_t>(hi));
}

Result Engine::count(Result r) {
  switch (r.verdict) {
    case Verdict::translated:
      ++counters_.translated;
      break;
    case Verdict::passed:
      ++counters_.passed;
      break;
    case Verdict::dropped:
      ++counters_.dropped;
      break;
    case Verdict::refused:
      ++counters_.refused;
      break;
  }
  if (r.reason != Drop::none) ++counters_.by_reason[static_cast<size_t>(r.reason)];
  return r;
}

Result Engine::to_stack(std::span<uint8_t> packet, uint64_t now_ms) {
  ++counters_.packets[to_stack_side];
  counters_.bytes[to_stack_side] += packet.size();
  PacketView v;
  if (Drop d = parse_packet(packet, v); d != Drop::none) return count(drop(d));
  if (!v.has_l4) return count(kPass);  // later fragment: no ports to rewrite
  if (is_l4(v.proto)) return count(stack_l4(v, now_ms));
  if (v.proto == (v.v6 ? ipproto::icmpv6 : ipproto::icmp) && is_icmp_error(v.v6, v.l4_ptr()[0]))
    return count(icmp_error(v, to_stack_side));
  return count(kPass);
}

Result Engine::to_tun(std::span<uint8_t> packet, uint64_t now_ms) {
  ++counters_.packets[to_tun_side];
  counters_.bytes[to_tun_side] += packet.size();
  PacketView v;
  if (Drop d = parse_packet(packet, v); d != Drop::none) return count(drop(d));
  if (!v.has_l4) return count(kPass);
  if (is_l4(v.proto)) return count(tun_l4(v, now_ms));
  if (v.proto == (v.v6 ? ipproto::icmpv6 : ipproto::icmp) && is_icmp_error(v.v6, v.l4_ptr()[0]))
    return count(icmp_error(v, to_tun_side));
  return count(kPass);
}

// The two ends of a TCP/UDP packet as the engine sees them: which is the
// virtual address (the destination wins if both are), and the client, held
// as the flow key they make. The key is written in place, a word at a time,
// and never copied: the lookup reads it as 8-byte words, and reading bytes
// wider than they were written makes each load wait for the stores.
struct Engine::Ends {
  int vaddr = -1;  // index in the ruleset, -1 if neither end is virtual
  bool inbound = false;
  uint16_t vport = 0;
  FlowKey flow;  // client, client_port, vaddr; p1 and proto set by key()

  const IpAddr& client() const { return flow.client; }
  const IpAddr& vip() const { return flow.vaddr; }
  uint16_t client_port() const { return flow.client_port; }
  const FlowKey& key(uint16_t p1, Proto proto) {
    flow.set_ports(flow.client_port, p1, static_cast<uint8_t>(proto));
    return flow;
  }
};

// Inlined: returned through memory, its fields were read back wider than
// they were written, and the loads waited for the stores (about 15% of a packet's time).
[[gnu::always_inline]] inline Engine::Ends Engine::ends(const PacketView& v) const {
  Ends e;
  e.flow.vaddr = v.dst();
  e.vaddr = rules_.find_vaddr(e.flow.vaddr);
  e.inbound = e.vaddr >= 0;
  if (e.inbound) {
    e.flow.client = v.src();
    e.flow.client_port = v.src_port();
    e.vport = v.dst_port();
  } else {
    e.flow.client = e.flow.vaddr;
    e.flow.vaddr = v.src();
    e.vaddr = rules_.find_vaddr(e.flow.vaddr);
    e.flow.client_port = v.dst_port();
    e.vport = v.src_port();
  }
  return e;
}

Result Engine::stack_l4(const PacketView& v, uint64_t now) {
  Proto proto = to_proto(v.proto);
  Ends e = ends(v);
  if (e.vaddr < 0) return kPass;
  const Listen* l = rules_.find_listen(e.vaddr, e.vport, proto);
  uint8_t flags = tcp_flags(v);
  if (!l) {
    if (!rules_.hidden(e.vport)) return kPass;
    uint16_t coop =
        proto == Proto::tcp && rules_.cooperative() ? rules_.coop_app(e.vaddr, e.vport) : kNoApp;
    if (coop != kNoApp) return coop_data(e, flags, v, coop, now);
    return drop(Drop::hidden_port);  // reachable only through translation
  }
  const FlowKey& key = e.key(e.vport, proto);
  // Negotiation on p1, for every client no plain app takes (a plain app's
  // client has a flow after its first packet: no classifying each packet).
  if (l->negotiator_app != kNoApp && !flows_.find(key)) {
    uint16_t app = rules_.classify(*l, e.client(), e.client_port());
    if (app == kNoApp || rules_.config().apps[app].cooperative)
      return {Verdict::passed, Drop::none, l->negotiator_app};
  }
  Mapping m = flow_p2(key, *l, e.inbound, flags, now);
  if (m.port == 0) return m.result;
  track(*m.flow, proto, flags, e.inbound, v.bytes.size(), now);
  if (e.inbound && (flags & tcpflag::syn) && proto == Proto::tcp) m.flow->mss = announced_mss(v);
  WordEdit edits[2];
  rewrite_port(proto, v.l4_ptr(), v.l4_len(), e.inbound, m.port, edits);
  return {Verdict::translated, Drop::none, m.flow->app};
}

Result Engine::tun_l4(const PacketView& v, uint64_t now) {
  Proto proto = to_proto(v.proto);
  Ends e = ends(v);
  if (e.vaddr < 0) return kPass;
  Mapping m = reverse_p1(e.vaddr, proto, e.vport);
  if (m.port == 0) {
    // A cooperative connection's packets keep their port, and its flow its counters.
    if (m.result.verdict == Verdict::passed && rules_.cooperative())
      if (Flow* f = flows_.find(e.key(e.vport, proto))) {
        track(*f, proto, tcp_flags(v), e.inbound, v.bytes.size(), now);
        return {Verdict::passed, Drop::none, f->app, f->mss};
      }
    return m.result;
  }
  Result r = kTranslated;
  if (Flow* f = flows_.find(e.key(m.port, proto))) {
    track(*f, proto, tcp_flags(v), e.inbound, v.bytes.size(), now);
    r.app = f->app;
    r.mss = f->mss;
  }
  WordEdit edits[2];
  rewrite_port(proto, v.l4_ptr(), v.l4_len(), e.inbound, m.port, edits);
  return r;
}

Engine::Mapping Engine::reverse_p1(int vi, Proto proto, uint16_t port) {
  // The stack must speak from p2s only; p1 on the stack side would not survive
  // the round trip (it would be translated again on the way in). Except
  // where VPMs negotiate, and on a cooperative p2: both pass untranslated.
  if (const Listen* l = rules_.find_listen(vi, port, proto))
    return {0, l->negotiator_app != kNoApp ? kPass : drop(Drop::stack_used_p1), nullptr};
  if (!rules_.hidden(port)) return {0, kPass, nullptr};
  if (proto == Proto::tcp && rules_.cooperative() && rules_.coop_app(vi, port) != kNoApp)
    return {0, kPass, nullptr};
  uint16_t p1 = rules_.p1_of(vi, proto, port);
  if (p1 == 0) return {0, drop(Drop::unassigned_p2), nullptr};
  return {p1, kTranslated, nullptr};
}

Result Engine::icmp_error(const PacketView& v, Side side) {
  // Which end of the quoted packet is the virtual address decides which port
  // moves: an error sent to a vaddr quotes what the vaddr sent (its source
  // port), an error sent by a vaddr quotes what a client sent (destination).
  bool to_vaddr = rules_.find_vaddr(v.dst()) >= 0;
  if (!to_vaddr && rules_.find_vaddr(v.src()) < 0) return kPass;
  uint8_t* icmp = v.l4_ptr();
  PacketView inner;
  if (parse_quoted(v.bytes.subspan(v.l4 + 8), v.v6, inner) != Drop::none)
    return drop(Drop::icmp_quote);  // a quote we cannot read could hide a p1 or p2
  if (!inner.has_l4 || !is_l4(inner.proto)) return kPass;
  Proto proto = to_proto(inner.proto);
  bool quoted_dst = !to_vaddr;  // the vaddr's port is the quoted destination port
  IpAddr vaddr = quoted_dst ? inner.dst() : inner.src();
  int vi = rules_.find_vaddr(vaddr);
  if (vi < 0) return kPass;
  uint16_t vport = quoted_dst ? inner.dst_port() : inner.src_port();
  Mapping m;
  if (side == to_stack_side) {
    const Listen* l = rules_.find_listen(vi, vport, proto);
    if (!l && proto == Proto::tcp && rules_.cooperative() && rules_.coop_app(vi, vport) != kNoApp)
      return kPass;  // a cooperative p2 keeps its number
    if (!l) return rules_.hidden(vport) ? drop(Drop::hidden_port) : kPass;
    if (l->negotiator_app != kNoApp) return kPass;  // negotiation, or a plain client: see quoted_p2
    FlowKey key = quoted_dst ? make_key(inner.src(), inner.src_port(), vaddr, vport, proto)
                             : make_key(inner.dst(), inner.dst_port(), vaddr, vport, proto);
    m = quoted_p2(key, *l);
  } else {
    m = reverse_p1(vi, proto, vport);
  }
  if (m.port == 0) return m.result;
  WordEdit edits[2];
  int n = rewrite_port(proto, inner.l4_ptr(), inner.l4_len(), quoted_dst, m.port, edits);
  // The ICMP checksum covers the quote: fold in every word that changed. The
  // quoted L4 header starts at an even offset from the ICMP header (8 + IP
  // header lengths, all multiples of 4), so the words align.
  uint16_t sum = load16(icmp + 2);
  for (int i = 0; i < n; ++i) sum = update16(sum, edits[i].before, edits[i].after);
  store16(icmp + 2, sum);
  return kTranslated;
}

// A packet to or from a cooperative app's p2, TUN side. A new connection
// is let in when the negotiation admits it; its flow is keyed by p2, which
// both sides use on the wire.
Result Engine::coop_data(Ends& e, uint8_t flags, const PacketView& v, uint16_t app, uint64_t now) {
  const FlowKey& key = e.key(e.vport, Proto::tcp);
  bool new_syn = e.inbound && (flags & (tcpflag::syn | tcpflag::ack)) == tcpflag::syn;
  Flow* f = flows_.find(key);
  if (f && ((now >= f->last_ms && now - f->last_ms >= timeout_ms(*f)) ||
            (f->state == FlowState::closed && new_syn))) {
    end_flow(*f);
    f = nullptr;
  }
  if (!f) {
    if (!new_syn) return drop(Drop::no_flow);
    coop::Outcome o =
        admit_ ? admit_({e.client(), e.client_port()}, e.vip(), e.vport, load32(v.l4_ptr() + 4))
               : coop::Outcome::not_negotiated;
    if (o == coop::Outcome::pending) return drop(Drop::coop_pending);
    if (o == coop::Outcome::window_passed) return refuse(Drop::coop_late);
    if (o != coop::Outcome::admitted) return refuse(Drop::coop_not_negotiated);
    f = insert_flow(key);
    if (!f) return refuse(Drop::table_full);
    ++counters_.flows_created;
    ++app_counters_[app].flows;
    flows_.stats(*f).created_ms = now;
    f->last_ms = now;
    uint16_t p1 = rules_.p1_of(e.vaddr, Proto::tcp, e.vport);
    const Listen* l = rules_.find_listen(e.vaddr, p1, Proto::tcp);
    f->listen = l ? static_cast<uint16_t>(l - rules_.listens().data()) : 0;
    f->app = app;
    f->p2 = e.vport;
    start_flow(*f, flags, e.inbound);
  }
  track(*f, Proto::tcp, flags, e.inbound, v.bytes.size(), now);
  if (new_syn) f->mss = announced_mss(v);
  return {Verdict::passed, Drop::none, f->app};
}

Engine::Mapping Engine::quoted_p2(const FlowKey& key, const Listen& l) {
  // A quote never creates state: use the flow if held, else per-app rules.
  if (Flow* f = flows_.find(key); f && f->state != FlowState::waiting)
    return {f->p2, kTranslated, nullptr};
  if (per_connection_) return {0, drop(Drop::no_flow), nullptr};
  uint16_t app = rules_.classify(l, key.client, key.client_port);
  if (app == kNoApp) return {0, drop(Drop::unmatched), nullptr};
  return {l.p2_of_app[app], kTranslated, nullptr};
}

Engine::Mapping Engine::flow_p2(const FlowKey& key, const Listen& l, bool inbound, uint8_t flags,
                                uint64_t now) {
  bool new_syn =
      key.proto == ipproto::tcp && (flags & (tcpflag::syn | tcpflag::ack)) == tcpflag::syn;
  Flow* f = flows_.find(key);
  // Idle past its timeout, or over and the client reuses its port for a new
  // connection: this packet starts a new flow, under the rules of now.
  if (f && f->state != FlowState::waiting &&
      ((now >= f->last_ms && now - f->last_ms >= timeout_ms(*f)) ||
       (f->state == FlowState::closed && inbound && new_syn))) {
    end_flow(*f);
    f = nullptr;
  }
  if (!f) {
    uint16_t app = rules_.classify(l, key.client, key.client_port);
    if (app == kNoApp)
      return {0, inbound ? refuse(Drop::unmatched) : drop(Drop::unmatched), nullptr};
    // Per-connection p2s cannot be rebuilt mid-connection: the stack never
    // saw this connection on any port we could pick now. Only clients open them.
    if (per_connection_ && !inbound) return {0, drop(Drop::no_flow), nullptr};
    if (per_connection_ && key.proto == ipproto::tcp && !new_syn)
      return {0, refuse(Drop::no_flow), nullptr};
    auto listen = static_cast<uint16_t>(&l - rules_.listens().data());
    std::optional<uint16_t> port = per_connection_ ? port_for(key, listen) : l.p2_of_app[app];
    f = insert_flow(key);
    if (!f) {
      if (per_connection_ && port) pools_[listen].release(*port);
      return {0, refuse(Drop::table_full), nullptr};
    }
    ++counters_.flows_created;
    ++app_counters_[app].flows;
    flows_.stats(*f).created_ms = now;
    f->last_ms = now;
    f->listen = listen;
    f->app = app;
    f->state = FlowState::waiting;
    f->p2 = port.value_or(0);
    if (f->p2 != 0) {
      start_flow(*f, flags, inbound);
    } else {
      ++counters_.port_waits;
      ++app_counters_[app].port_waits;
    }
  } else if (f->state == FlowState::waiting) {
    if (auto port = port_for(key, f->listen)) {
      f = flows_.find(key);  // an eviction may have moved it
      f->p2 = *port;
      start_flow(*f, flags, inbound);
    }
  }
  if (f->state == FlowState::waiting) {
    if (now - flows_.stats(*f).created_ms >= queue_timeout_ms_) {
      ++app_counters_[f->app].refused;
      end_flow(*f);
      return {0, refuse(Drop::port_wait_timeout), nullptr};
    }
    return {0, drop(Drop::port_wait), nullptr};
  }
  return {f->p2, kTranslated, f};
}

// A new slot for `key`; when the table is full, the oldest unconfirmed flow
// near it ends first. nullptr if the table is full of confirmed flows.
Flow* Engine::insert_flow(const FlowKey& key) {
  if (Flow* f = flows_.insert(key)) return f;
  Flow* victim = flows_.oldest_near(key, unconfirmed);
  if (!victim) return nullptr;
  ++counters_.evicted_table_full;
  end_flow(*victim);
  return flows_.insert(key);
}

// A hidden port of `listen` for a new connection (per-connection
// allocation): the lowest free one, or failing that the one held by the
// oldest unconfirmed flow near `key` of the same listen, which ends.
// Pointers into the flow table may move.
std::optional<uint16_t> Engine::port_for(const FlowKey& key, uint16_t listen) {
  if (auto port = pools_[listen].acquire()) return port;
  Flow* victim = flows_.oldest_near(key, [&](const Flow& f) {
    return f.listen == listen && f.p2 != 0 && f.state != FlowState::waiting && unconfirmed(f);
  });
  if (!victim) return std::nullopt;
  ++counters_.evicted_no_port;
  end_flow(*victim);
  return pools_[listen].acquire();
}

void Engine::start_flow(Flow& f, uint8_t flags, bool inbound) {
  f.seen = 0;
  if (f.key.proto == ipproto::udp)
    f.state = FlowState::established;
  else if (inbound && (flags & (tcpflag::syn | tcpflag::ack)) == tcpflag::syn)
    f.state = FlowState::syn_sent;
  else
    f.state = FlowState::pickup;
}

void Engine::track(Flow& f, Proto proto, uint8_t flags, bool inbound, size_t bytes, uint64_t now) {
  int dir = inbound ? 0 : 1;
  FlowStats& st = flows_.stats(f);
  ++st.packets[dir];
  st.bytes[dir] += bytes;
  if (now > f.last_ms) f.last_ms = now;
  if (proto == Proto::udp && !inbound) f.seen |= flow_seen::seen_out;  // answered
  if (proto != Proto::tcp || f.state == FlowState::waiting) return;
  // The common case: a segment of an established connection changes nothing.
  if (f.state == FlowState::established && !(flags & (tcpflag::syn | tcpflag::fin | tcpflag::rst)))
    return;
  if (flags & tcpflag::rst) {
    f.state = FlowState::closed;
    return;
  }
  f.seen |= inbound ? flow_seen::seen_in : flow_seen::seen_out;
  if (flags & tcpflag::syn) f.seen |= inbound ? flow_seen::syn_in : flow_seen::syn_out;
  if (flags & tcpflag::fin) f.seen |= inbound ? flow_seen::fin_in : flow_seen::fin_out;
  bool both_fins = (f.seen & flow_seen::fin_in) && (f.seen & flow_seen::fin_out);
  switch (f.state) {
    case FlowState::closed:
      break;
    case FlowState::syn_sent:
      if (!inbound && (flags & tcpflag::syn)) f.state = FlowState::syn_recv;
      break;
    case FlowState::syn_recv:
      if (inbound && (flags & tcpflag::ack) && !(flags & tcpflag::syn))
        f.state = FlowState::established;
      break;
    case FlowState::pickup:
      if ((f.seen & flow_seen::seen_in) && (f.seen & flow_seen::seen_out))
        f.state = FlowState::established;
      break;
    default:
      break;
  }
  if (f.state != FlowState::closed && (f.seen & (flow_seen::fin_in | flow_seen::fin_out)))
    f.state = both_fins ? FlowState::closed : FlowState::fin_wait;
}

uint64_t Engine::timeout_ms(const Flow& f) const {
  switch (f.state) {
    // A waiting client that stopped retransmitting: long enough that one
    // still trying always meets its own entry and gets its refusal.
    case FlowState::waiting:
      return 2ull * queue_timeout_ms_ + timeouts_.tcp_handshake_ms;
    case FlowState::established:
      if (f.key.proto == ipproto::tcp) return timeouts_.tcp_established_ms;
      return unconfirmed(f) ? timeouts_.udp_unreplied_ms : timeouts_.udp_ms;
    case FlowState::syn_sent:
    case FlowState::syn_recv:
    case FlowState::pickup:
      return timeouts_.tcp_handshake_ms;
    case FlowState::closed:
      return timeouts_.tcp_closed_ms;
    case FlowState::fin_wait:
      break;
  }
  return timeouts_.tcp_transitory_ms;
}

void Engine::end_flow(Flow& f) {
  if (per_connection_ && f.p2 != 0) pools_[f.listen].release(f.p2);
  ++counters_.flows_ended;
  flows_.erase(&f);
}

void Engine::reload(const Config& cfg, const std::vector<uint16_t>& app_of) {
  Ruleset next(cfg, &rules_);
  const auto& old_listens = rules_.listens();
  constexpr uint16_t kGone = 0xffff;
  std::vector<uint16_t> listen_of(old_listens.size(), kGone);
  for (size_t i = 0; i < old_listens.size(); ++i) {
    const Listen& l = old_listens[i];
    int v = next.find_vaddr(l.vaddr);
    if (const Listen* n = v < 0 ? nullptr : next.find_listen(v, l.p1, l.proto))
      listen_of[i] = static_cast<uint16_t>(n - next.listens().data());
  }
  std::vector<PortPool> pools;
  if (per_connection_) {
    // reload_errors keeps the slices as they were: a listen's ports carry over.
    for (auto& l : next.listens()) pools.push_back(pool_of(l));
    for (size_t i = 0; i < old_listens.size(); ++i)
      if (listen_of[i] != kGone) pools[listen_of[i]] = pools_[i];
  }
  // Flows of an app that is gone: closed ones, lingering for stray packets
  // (flows_per_app does not count them). They end here.
  std::vector<FlowKey> orphans;
  flows_.update_each([&](Flow& f) {
    uint16_t app = f.app < app_of.size() ? app_of[f.app] : kNoApp;
    uint16_t listen = listen_of[f.listen];
    if (app == kNoApp || listen == kGone) {
      if (per_connection_ && f.p2 != 0 && listen != kGone) pools[listen].release(f.p2);
      orphans.push_back(f.key);
      return;
    }
    f.app = app;
    f.listen = listen;
  });
  for (auto& key : orphans) {
    flows_.erase(flows_.find(key));
    ++counters_.flows_ended;
  }
  std::vector<AppCounters> counters(cfg.apps.size());
  for (size_t i = 0; i < app_of.size() && i < app_counters_.size(); ++i)
    if (app_of[i] != kNoApp) counters[app_of[i]] = app_counters_[i];
  app_counters_ = std::move(counters);
  rules_ = std::move(next);
  pools_ = std::move(pools);
  timeouts_ = cfg.timeouts;
  queue_timeout_ms_ = cfg.vpm.queue_timeout_ms;
}

std::vector<size_t> Engine::flows_per_app() const {
  std::vector<size_t> n(rules_.config().apps.size());
  flows_.for_each([&](const Flow& f, const FlowStats&) {
    if (f.state != FlowState::closed) ++n[f.app];
  });
  return n;
}

void Engine::expire(uint64_t now_ms, size_t budget) {
  flows_.sweep(
      budget,
      [&](const Flow& f) { return now_ms >= f.last_ms && now_ms - f.last_ms >= timeout_ms(f); },
      [&](Flow& f) {
        if (per_connection_ && f.p2 != 0) pools_[f.listen].release(f.p2);
        ++counters_.flows_ended;
      });
}

}  // namespace vpm
