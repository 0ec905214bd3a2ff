// The engine: verdicts, ports and checksums for a table of packets, plus
// allocation, queueing, timeouts and ICMP error translation scenarios.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/engine.hpp"
#include "vpm/refusal.hpp"

using namespace testpkt;
using vpm::Drop;
using vpm::Verdict;

namespace {

const char* kDemo = R"(
[vpm]
port_range = "20000-29999"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000", "192.0.2.10:9000/udp", "[2001:db8::10]:9000", "[2001:db8::10]:9000/udp"]
clients = ["198.51.100.0/24", "2001:db8:1::/48"]
serve = "http-info"
[[app]]
name = "green"
aid = 102
listen = ["192.0.2.10:9000", "192.0.2.10:9000/udp", "[2001:db8::10]:9000", "[2001:db8::10]:9000/udp"]
clients = ["203.0.113.0/24", "2001:db8:2::/48", "198.51.100.7:40000"]
serve = "echo"
)";

uint16_t p2_of(const vpm::Engine& e, const char* vaddr, const char* app) {
  auto& r = e.rules();
  auto* l = r.find_listen(r.find_vaddr(addr(vaddr)), 9000, vpm::Proto::tcp);
  for (size_t a = 0; a < r.config().apps.size(); ++a)
    if (r.config().apps[a].name == app) return l->p2_of_app[a];
  return 0;
}

struct Case {
  const char* description;
  Spec packet;
  bool to_stack;
  Verdict verdict;
  Drop reason;
  const char* p2_app;  // expected new port: this app's p2 (nullptr: unchanged)
};

}  // namespace

TEST_CASE("engine verdicts and ports, one packet each") {
  auto cfg = config(kDemo);
  std::vector<Case> cases = {
      {"TCP SYN from a blue client",
       {"198.51.100.5", "192.0.2.10", 6, 40000, 9000, 0x02},
       true,
       Verdict::translated,
       Drop::none,
       "blue"},
      {"TCP SYN from a green prefix",
       {"203.0.113.5", "192.0.2.10", 6, 40000, 9000, 0x02},
       true,
       Verdict::translated,
       Drop::none,
       "green"},
      {"exact pair beats the blue /24",
       {"198.51.100.7", "192.0.2.10", 6, 40000, 9000, 0x02},
       true,
       Verdict::translated,
       Drop::none,
       "green"},
      {"UDP over IPv6 from blue",
       {"2001:db8:1::5", "2001:db8::10", 17, 5353, 9000, 0, {1, 2, 3}},
       true,
       Verdict::translated,
       Drop::none,
       "blue"},
      {"reply from the vaddr, mid-stream pickup",
       {"192.0.2.10", "203.0.113.5", 6, 9000, 41000, 0x10},
       true,
       Verdict::translated,
       Drop::none,
       "green"},
      {"unmatched client is refused",
       {"192.0.2.99", "192.0.2.10", 6, 40000, 9000, 0x02},
       true,
       Verdict::refused,
       Drop::unmatched,
       nullptr},
      {"direct access to a hidden port",
       {"198.51.100.5", "192.0.2.10", 6, 40000, 22000, 0x02},
       true,
       Verdict::dropped,
       Drop::hidden_port,
       nullptr},
      {"other port of the vaddr passes",
       {"198.51.100.5", "192.0.2.10", 6, 40000, 80, 0x02},
       true,
       Verdict::passed,
       Drop::none,
       nullptr},
      {"9000/tcp on another address passes",
       {"198.51.100.5", "192.0.2.11", 6, 40000, 9000, 0x02},
       true,
       Verdict::passed,
       Drop::none,
       nullptr},
      {"ICMP echo passes",
       {"198.51.100.5", "192.0.2.10", 1, 0, 0, 0, {0, 1, 0, 1}, 8, 0},
       true,
       Verdict::passed,
       Drop::none,
       nullptr},
      {"stack side: p1 on the stack is an error",
       {"192.0.2.10", "198.51.100.5", 6, 9000, 40000, 0x12},
       false,
       Verdict::dropped,
       Drop::stack_used_p1,
       nullptr},
      {"stack side: hidden port with no owner",
       {"192.0.2.10", "198.51.100.5", 6, 29999, 40000, 0x12},
       false,
       Verdict::dropped,
       Drop::unassigned_p2,
       nullptr},
      {"stack side: other port passes",
       {"192.0.2.10", "198.51.100.5", 6, 80, 40000, 0x12},
       false,
       Verdict::passed,
       Drop::none,
       nullptr},
  };
  for (auto& c : cases) {
    SECTION(c.description) {
      vpm::Engine engine(cfg);
      Bytes p = build(c.packet);
      Bytes before = p;
      auto r = c.to_stack ? engine.to_stack(p, 0) : engine.to_tun(p, 0);
      CHECK(vpm::verdict_name(r.verdict) == std::string(vpm::verdict_name(c.verdict)));
      CHECK(vpm::drop_name(r.reason) == std::string(vpm::drop_name(c.reason)));
      size_t l4 = l4_of(p);
      bool inbound = c.packet.dport == 9000 || c.packet.dport == 22000 || c.packet.dport == 80;
      if (c.p2_app) {
        CHECK(get16(p, l4 + (inbound ? 2 : 0)) ==
              p2_of(engine,
                    c.packet.src[0] == '2' && c.packet.src.find(':') != std::string::npos
                        ? "2001:db8::10"
                        : "192.0.2.10",
                    c.p2_app));
        CHECK(l4_checksum_ok(p));
        CHECK(engine.to_tun(p, 0).verdict == Verdict::translated);
        CHECK(p == before);
      } else {
        CHECK(p == before);
      }
    }
  }
}

TEST_CASE("stack-side replies map back to p1 without state") {
  vpm::Engine engine(config(kDemo));
  uint16_t p2 = p2_of(engine, "192.0.2.10", "green");
  Bytes reply = build({"192.0.2.10", "203.0.113.5", 6, p2, 41000, 0x12});
  REQUIRE(engine.to_tun(reply, 0).verdict == Verdict::translated);
  CHECK(get16(reply, 20) == 9000);
  CHECK(l4_checksum_ok(reply));
}

TEST_CASE("UDP checksum rules") {
  vpm::Engine engine(config(kDemo));
  SECTION("IPv4 zero checksum means none and stays zero") {
    Bytes p = build({"198.51.100.5", "192.0.2.10", 17, 5000, 9000, 0, {7, 7}});
    put16(p, 20 + 6, 0);
    REQUIRE(engine.to_stack(p, 0).verdict == Verdict::translated);
    CHECK(get16(p, 20 + 6) == 0);
    CHECK(get16(p, 20 + 2) == p2_of(engine, "192.0.2.10", "blue"));
  }
  SECTION("a sum that computes to zero is sent as 0xFFFF") {
    uint16_t p2 = p2_of(engine, "192.0.2.10", "blue");
    // Choose a payload word so the checksum over the translated datagram is zero.
    Spec s{"198.51.100.5", "192.0.2.10", 17, 5000, p2, 0, {0, 0}};
    Bytes l4 = l4_bytes(s);
    uint16_t c = l4_checksum(false, addr(s.src), addr(s.dst), 17, l4);  // ~(sum of all)
    // Adding c to the data makes the sum 0xFFFF, so the checksum computes to zero.
    s.payload = {static_cast<uint8_t>(c >> 8), static_cast<uint8_t>(c)};
    l4 = l4_bytes(s);
    REQUIRE(l4_checksum(false, addr(s.src), addr(s.dst), 17, l4) == 0);
    s.dport = 9000;
    Bytes p = build(s);
    REQUIRE(engine.to_stack(p, 0).verdict == Verdict::translated);
    CHECK(get16(p, 20 + 2) == p2);
    CHECK(get16(p, 20 + 6) == 0xffff);
  }
}

TEST_CASE("fragments: the first carries ports and is translated, later ones pass") {
  vpm::Engine engine(config(kDemo));
  Bytes first = build({"198.51.100.5", "192.0.2.10", 17, 5000, 9000, 0, Bytes(64, 1)});
  put16(first, 6, 0x2000);
  put16(first, 10, 0);
  put16(first, 10, reference_checksum(Bytes(first.begin(), first.begin() + 20)));
  uint16_t sum_before = get16(first, 26);
  REQUIRE(engine.to_stack(first, 0).verdict == Verdict::translated);
  uint16_t p2 = p2_of(engine, "192.0.2.10", "blue");
  CHECK(get16(first, 22) == p2);
  CHECK(get16(first, 26) == vpm::update16(sum_before, 9000, p2));
  Bytes later = first;
  put16(later, 6, 0x0008);
  Bytes copy = later;
  CHECK(engine.to_stack(later, 0).verdict == Verdict::passed);
  CHECK(later == copy);
}

TEST_CASE("ICMP errors: quoted ports and checksums translated both ways") {
  vpm::Engine engine(config(kDemo));
  for (bool v6 : {false, true}) {
    INFO((v6 ? "IPv6" : "IPv4"));
    const char* vip = v6 ? "2001:db8::10" : "192.0.2.10";
    const char* client = v6 ? "2001:db8:1::5" : "198.51.100.5";
    uint16_t p2 = p2_of(engine, vip, "blue");
    size_t outer = v6 ? 40 : 20, inner_l4 = outer + 8 + (v6 ? 40 : 20);

    // The vaddr reports a client's datagram unreachable (as lwIP would, on p2).
    Bytes quoted = build({client, vip, 17, 5000, p2, 0, {1, 2, 3, 4}});
    Bytes err = icmp_error(vip, client, quoted);
    Bytes original = err;
    REQUIRE(engine.to_tun(err, 0).verdict == Verdict::translated);
    CHECK(get16(err, inner_l4 + 2) == 9000);
    CHECK(l4_checksum_ok(err));
    Bytes inner(err.begin() + static_cast<long>(outer + 8), err.end());
    CHECK(l4_checksum_ok(inner));  // the quoted UDP checksum was fixed too
    REQUIRE(engine.to_stack(err, 0).verdict == Verdict::translated);
    CHECK(err == original);

    // A client reports the vaddr's reply unreachable: quotes vaddr:9000 -> client.
    Bytes reply = build({vip, client, 6, 9000, 5000, 0x10});
    Bytes err2 = icmp_error(client, vip, reply);
    REQUIRE(engine.to_stack(err2, 0).verdict == Verdict::translated);
    CHECK(get16(err2, inner_l4) == p2);
    CHECK(l4_checksum_ok(err2));
    Bytes inner2(err2.begin() + static_cast<long>(outer + 8), err2.end());
    CHECK(l4_checksum_ok(inner2));

    // A quote cut after 8 bytes of TCP: ports move, the outer checksum still verifies.
    Bytes cut = build({vip, client, 6, 9000, 5000, 0x10});
    cut.resize((v6 ? 40 : 20) + 8);
    Bytes err3 = icmp_error(client, vip, cut);
    REQUIRE(engine.to_stack(err3, 0).verdict == Verdict::translated);
    CHECK(get16(err3, inner_l4) == p2);
    CHECK(l4_checksum_ok(err3));

    // A quote too short to hold an IP header is dropped, not guessed at.
    Bytes err4 = icmp_error(client, vip, Bytes{0x45, 0, 0});
    if (v6) err4 = icmp_error(client, vip, Bytes{0x60, 0, 0});
    CHECK(engine.to_stack(err4, 0).reason == Drop::icmp_quote);
  }
}

TEST_CASE("TCP state and timeouts") {
  auto cfg = config(std::string(kDemo) + "\n");
  cfg.timeouts.tcp_transitory_ms = 1000;
  cfg.timeouts.tcp_established_ms = 5000;
  cfg.timeouts.tcp_closed_ms = 100;
  cfg.timeouts.tcp_handshake_ms = 1000;
  vpm::Engine e(cfg);
  auto send = [&](const char* src, const char* dst, uint16_t sp, uint16_t dp, uint8_t flags,
                  uint64_t t) {
    Bytes p = build({src, dst, 6, sp, dp, flags});
    return e.to_stack(p, t);
  };
  auto state = [&]() {
    vpm::FlowState s = vpm::FlowState::waiting;
    e.flows().for_each([&](const vpm::Flow& f, const vpm::FlowStats&) { s = f.state; });
    return std::string(vpm::flow_state_name(s));
  };
  send("198.51.100.5", "192.0.2.10", 40000, 9000, 0x02, 0);
  CHECK(state() == "syn_sent");
  send("192.0.2.10", "198.51.100.5", 9000, 40000, 0x12, 1);
  CHECK(state() == "syn_recv");
  send("198.51.100.5", "192.0.2.10", 40000, 9000, 0x10, 2);
  CHECK(state() == "established");
  e.expire(2 + 4999, SIZE_MAX);
  CHECK(e.flows().size() == 1);  // established: 5000 ms
  send("198.51.100.5", "192.0.2.10", 40000, 9000, 0x11, 3000);
  CHECK(state() == "fin_wait");
  send("192.0.2.10", "198.51.100.5", 9000, 40000, 0x11, 3001);
  CHECK(state() == "closed");
  e.expire(3050, SIZE_MAX);
  CHECK(e.flows().size() == 1);
  e.expire(3101, SIZE_MAX);
  CHECK(e.flows().size() == 0);
  CHECK(e.counters().flows_ended == 1);

  send("198.51.100.5", "192.0.2.10", 40001, 9000, 0x02, 4000);
  CHECK(state() == "syn_sent");
  e.expire(4999, SIZE_MAX);
  CHECK(e.flows().size() == 1);
  e.expire(5000, SIZE_MAX);  // half-open: handshake timeout
  CHECK(e.flows().size() == 0);

  send("198.51.100.5", "192.0.2.10", 40002, 9000, 0x02, 6000);
  send("198.51.100.5", "192.0.2.10", 40002, 9000, 0x04, 6001);
  CHECK(state() == "closed");
  send("198.51.100.5", "192.0.2.10", 40002, 9000, 0x02, 6002);  // port reused
  CHECK(state() == "syn_sent");
}

TEST_CASE("per-connection allocation: lowest free, queueing, refusal") {
  auto cfg = config(R"(
[vpm]
port_range = "20000-20001"
allocation = "per-connection"
queue_timeout_ms = 2000
[timeouts]
tcp_closed = "500ms"
[[app]]
name = "a"
aid = 1
listen = ["192.0.2.10:9000", "192.0.2.10:9000/udp"]
clients = ["198.51.100.0/24"]
serve = "echo"
)");
  vpm::Engine e(cfg);
  auto syn = [&](uint16_t sport, uint64_t t, uint8_t flags = 0x02) {
    Bytes p = build({"198.51.100.5", "192.0.2.10", 6, sport, 9000, flags});
    auto r = e.to_stack(p, t);
    return std::make_pair(r, get16(p, 22));
  };
  auto answer = [&](uint16_t p2, uint16_t sport, uint64_t t) {  // the stack's SYN-ACK
    Bytes p = build({"192.0.2.10", "198.51.100.5", 6, p2, sport, 0x12});
    return e.to_tun(p, t);
  };
  CHECK(syn(1001, 0).second == 20000);
  CHECK(syn(1002, 0).second == 20001);
  CHECK(syn(1001, 1).second == 20000);  // same flow keeps its port
  // Both complete their handshakes: they can no longer be evicted.
  for (auto [sport, p2] : {std::pair<uint16_t, uint16_t>{1001, 20000}, {1002, 20001}}) {
    answer(p2, sport, 2);
    syn(sport, 3, 0x10);
  }
  auto [r3, port3] = syn(1003, 10);
  CHECK(r3.reason == Drop::port_wait);
  CHECK(port3 == 9000);  // untouched while waiting
  CHECK(e.counters().port_waits == 1);
  // UDP has its own pool.
  Bytes u = build({"198.51.100.5", "192.0.2.10", 17, 1001, 9000, 0, {1}});
  CHECK(e.to_stack(u, 10).verdict == Verdict::translated);
  CHECK(get16(u, 22) == 20000);
  // A mid-connection packet with no translation cannot be given a port.
  CHECK(syn(1009, 10, 0x10).first.reason == Drop::no_flow);
  // The first connection ends; once its linger is over, the waiting client's retransmission gets
  // 20000.
  syn(1001, 20, 0x04);
  e.expire(600, SIZE_MAX);
  auto [r4, port4] = syn(1003, 1000);
  CHECK(r4.verdict == Verdict::translated);
  CHECK(port4 == 20000);
  answer(20000, 1003, 1001);
  syn(1003, 1002, 0x10);
  // Nothing frees now: a new client waits, then is refused after queue_timeout_ms.
  CHECK(syn(1004, 1100).first.reason == Drop::port_wait);
  CHECK(syn(1004, 2000).first.reason == Drop::port_wait);
  auto [r5, port5] = syn(1004, 3100);
  CHECK(r5.verdict == Verdict::refused);
  CHECK(r5.reason == Drop::port_wait_timeout);
  CHECK(e.counters().by_reason[static_cast<size_t>(Drop::port_wait_timeout)] == 1);
  CHECK(e.counters().evicted_no_port == 0);
}

TEST_CASE("per-connection allocation: a half-open flow gives up its port to a newcomer") {
  auto cfg = config(R"(
[vpm]
port_range = "20000-20001"
allocation = "per-connection"
[[app]]
name = "a"
aid = 1
listen = ["192.0.2.10:9000"]
clients = ["0.0.0.0/0"]
serve = "echo"
)");
  vpm::Engine e(cfg);
  auto syn = [&](const char* client, uint64_t t) {
    Bytes p = build({client, "192.0.2.10", 6, 1000, 9000, 0x02});
    auto r = e.to_stack(p, t);
    return std::make_pair(r.verdict, get16(p, 22));
  };
  // Two spoofed SYNs take both ports and never complete; a real client still gets one,
  // the oldest half-open flow's.
  CHECK(syn("203.0.113.1", 0).second == 20000);
  CHECK(syn("203.0.113.2", 1).second == 20001);
  auto [verdict, port] = syn("198.51.100.5", 2);
  CHECK(verdict == Verdict::translated);
  CHECK(port == 20000);
  CHECK(e.counters().evicted_no_port == 1);
  CHECK(e.counters().port_waits == 0);
  CHECK(e.flows().size() == 2);
}

TEST_CASE("a full flow table evicts unconfirmed flows first, then refuses and counts") {
  auto cfg = config(kDemo);
  cfg.vpm.max_flows = 2;
  vpm::Engine e(cfg);
  auto send = [&](const char* src, const char* dst, uint8_t proto, uint16_t sp, uint16_t dp,
                  uint8_t flags, uint64_t t) {
    Bytes p = build({src, dst, proto, sp, dp, flags, {1}});
    return e.to_stack(p, t);
  };
  auto p2_of = [&](uint16_t sport) {
    uint16_t p2 = 0;
    e.flows().for_each([&](const vpm::Flow& f, const vpm::FlowStats&) {
      if (f.key.client_port == sport) p2 = f.p2;
    });
    return p2;
  };
  struct Step {
    const char* what;
    uint8_t proto;
    uint16_t sport;
    uint8_t flags;
    bool answered;  // the virtual side answers (SYN-ACK, then the client's ACK; a UDP reply)
    Verdict verdict;
    uint64_t evicted;
  } steps[] = {
      {"a half-open connection", 6, 1000, 0x02, false, Verdict::translated, 0},
      {"an unanswered UDP flow", 17, 1001, 0, false, Verdict::translated, 0},
      {"a new SYN evicts the older of them (the SYN's)", 6, 1002, 0x02, true, Verdict::translated,
       1},
      {"a new datagram evicts the UDP flow", 17, 1003, 0, true, Verdict::translated, 2},
      {"with both flows confirmed, the next is refused", 6, 1004, 0x02, false, Verdict::refused,
       2},
  };
  uint64_t t = 0;
  for (const auto& s : steps) {
    INFO(s.what);
    auto r = send("198.51.100.5", "192.0.2.10", s.proto, s.sport, 9000, s.flags, ++t);
    CHECK(r.verdict == s.verdict);
    CHECK(e.counters().evicted_table_full == s.evicted);
    if (!s.answered) continue;
    uint16_t p2 = p2_of(s.sport);
    Bytes reply = build({"192.0.2.10", "198.51.100.5", s.proto, p2, s.sport, 0x12, {1}});
    CHECK(e.to_tun(reply, ++t).verdict == Verdict::translated);
    if (s.proto == 6) send("198.51.100.5", "192.0.2.10", 6, s.sport, 9000, 0x10, ++t);
  }
  CHECK(e.counters().by_reason[static_cast<size_t>(Drop::table_full)] == 1);
  CHECK(e.counters().flows_created == 4);
}

TEST_CASE("malformed packets are counted drops") {
  vpm::Engine e(config(kDemo));
  Bytes junk = {0x45, 0x00, 0x00};
  CHECK(e.to_stack(junk, 0).reason == Drop::ip_truncated);
  Bytes v7(40, 0x70);
  CHECK(e.to_tun(v7, 0).reason == Drop::ip_version);
  CHECK(e.counters().dropped == 2);
  CHECK(e.counters().by_reason[static_cast<size_t>(Drop::ip_truncated)] == 1);
  CHECK(e.counters().packets[vpm::to_stack_side] == 1);
  CHECK(e.counters().packets[vpm::to_tun_side] == 1);
}

TEST_CASE("refusals: RST for TCP, port unreachable for UDP, nothing for a RST") {
  std::vector<uint8_t> out;
  SECTION("SYN gets RST+ACK acknowledging the SYN") {
    Spec syn{"198.51.100.5", "192.0.2.10", 6, 40000, 9000, 0x02};
    syn.seq = 7;
    REQUIRE(vpm::build_refusal(build(syn), out));
    CHECK(addr("192.0.2.10") == vpm::IpAddr::v4(&out[12]));
    CHECK(get16(out, 20) == 9000);
    CHECK(get16(out, 22) == 40000);
    CHECK(out[33] == 0x14);
    CHECK(get16(out, 28) == 0);
    CHECK(get16(out, 30) == 8);  // ack = 7 + 1
    CHECK(l4_checksum_ok(out));
  }
  SECTION("a segment with ACK gets a RST from its ACK number") {
    Spec seg{"2001:db8:1::5", "2001:db8::10", 6, 40000, 9000, 0x10};
    seg.ack = 0x01020304;
    REQUIRE(vpm::build_refusal(build(seg), out));
    CHECK(out[40 + 13] == 0x04);
    CHECK(get16(out, 44) == 0x0102);
    CHECK(get16(out, 46) == 0x0304);
    CHECK(l4_checksum_ok(out));
  }
  SECTION("UDP gets port unreachable quoting it") {
    Bytes d = build({"2001:db8:1::5", "2001:db8::10", 17, 5000, 9000, 0, Bytes(2000, 1)});
    REQUIRE(vpm::build_refusal(d, out));
    CHECK(out.size() == 1280);
    CHECK(out[40] == 1);
    CHECK(out[41] == 4);
    CHECK(std::equal(out.begin() + 48, out.end(), d.begin()));
    CHECK(l4_checksum_ok(out));
    Bytes d4 = build({"198.51.100.5", "192.0.2.10", 17, 5000, 9000, 0, {1, 2}});
    REQUIRE(vpm::build_refusal(d4, out));
    CHECK(out[20] == 3);
    CHECK(out[21] == 3);
    CHECK(l4_checksum_ok(out));
  }
  SECTION("a RST is never answered") {
    CHECK_FALSE(vpm::build_refusal(build({"198.51.100.5", "192.0.2.10", 6, 1, 9000, 0x04}), out));
    CHECK(out.empty());
  }
}
