// The whole data path without root: TUN-side packets -> engine -> lwIP
// endpoints -> engine -> TUN side, with a minimal TCP client written here.
#include <arpa/inet.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "packets.hpp"
#include "stack/stack.hpp"
#include "stack/stack_memory.hpp"
#include "tun/daemon.hpp"
#include "vpm/engine.hpp"

using namespace testpkt;

namespace {

const char* kConfig = R"(
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
clients = ["203.0.113.0/24", "2001:db8:2::/48"]
serve = "echo"
)";

// The engine and the stack wired as the daemon wires them, with the TUN
// replaced by two queues.
struct DataPath {
  std::vector<Bytes> to_clients;  // what the daemon would write to the TUN
  vpm::Engine engine;
  stack::Stack stack;  // last: its destructor still sends (RSTs) through the others

  explicit DataPath(const vpm::Config& cfg)
      : engine(cfg), stack(engine.rules(), 65520, [this](std::span<uint8_t> p) {
          Bytes copy(p.begin(), p.end());
          auto r = engine.to_tun(copy, 0);
          if (r.verdict == vpm::Verdict::translated || r.verdict == vpm::Verdict::passed)
            to_clients.push_back(std::move(copy));
        }) {}

  vpm::Result from_client(Bytes p) {
    auto r = engine.to_stack(p, 0);
    if (r.verdict == vpm::Verdict::translated || r.verdict == vpm::Verdict::passed)
      stack.input(p, r.app);
    return r;
  }

  std::vector<Bytes> take() { return std::exchange(to_clients, {}); }
};

}  // namespace

// A whole HTTP exchange with the stack: handshake, request, reply up to its
// FIN (checked on the way: only p1 is seen, checksums hold). Returns the
// reply; `fin_seq`, if given, is set to the sequence number of the FIN.
std::string http_get(DataPath& dp, const std::string& client, const std::string& vip,
                     uint16_t port, uint32_t* fin_seq = nullptr) {
  Spec syn{client, vip, 6, port, 9000, 0x02};
  syn.seq = 1000;
  REQUIRE(dp.from_client(build(syn)).verdict == vpm::Verdict::translated);
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  Bytes& synack = out[0];
  size_t l4 = l4_of(synack);
  CHECK(get16(synack, l4) == 9000);  // the client sees p1 only
  CHECK(get16(synack, l4 + 2) == port);
  CHECK(synack[l4 + 13] == 0x12);
  CHECK(get32(synack, l4 + 8) == 1001);
  CHECK(l4_checksum_ok(synack));
  uint32_t server_seq = get32(synack, l4 + 4);

  std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  Spec data{client, vip, 6, port, 9000, 0x18, Bytes(request.begin(), request.end())};
  data.seq = 1001;
  data.ack = server_seq + 1;
  REQUIRE(dp.from_client(build(data)).verdict == vpm::Verdict::translated);
  std::string reply;
  bool fin = false;
  for (auto& p : dp.take()) {
    CHECK(get16(p, l4_of(p)) == 9000);
    CHECK(l4_checksum_ok(p));
    Bytes pl = payload_of(p);
    reply.append(pl.begin(), pl.end());
    bool this_fin = (p[l4_of(p) + 13] & 0x01) != 0;
    if (this_fin && fin_seq) *fin_seq = get32(p, l4_of(p) + 4) + static_cast<uint32_t>(pl.size());
    fin |= this_fin;
  }
  CHECK(fin);
  return reply;
}

TEST_CASE("a TCP client reaches its app's http-info through engine and lwIP") {
  DataPath dp(config(kConfig));
  for (bool v6 : {false, true}) {
    INFO((v6 ? "IPv6" : "IPv4"));
    std::string client = v6 ? "2001:db8:1::5" : "198.51.100.5";
    std::string reply = http_get(dp, client, v6 ? "2001:db8::10" : "192.0.2.10", 40000);
    INFO(reply);
    CHECK(reply.find("HTTP/1.1 200 OK") == 0);
    CHECK(reply.find("\"app\":\"blue\"") != std::string::npos);
    CHECK(reply.find("\"aid\":101") != std::string::npos);
    CHECK(reply.find("\"p1\":9000") != std::string::npos);
    CHECK(reply.find("\"client\":\"" + (v6 ? "[" + client + "]" : client) + ":40000\"") !=
          std::string::npos);
  }
  CHECK(dp.stack.counters().tcp_accepted == 2);
  CHECK(dp.stack.counters().lwip_asserts == 0);
}

// Issue 8: a SYN flood filled lwIP's backlog and every real client was
// refused. Past kMaxHalfOpen pending handshakes, SYNs get cookies.
TEST_CASE("a SYN flood: past 256 pending handshakes, a real client completes one with a cookie") {
  DataPath dp(config(kConfig));
  for (uint16_t i = 0; i < 300; ++i) {  // spoofed: nobody will ever answer the SYN-ACKs
    Spec syn{fmt::format("203.0.113.{}", i % 250), "192.0.2.10", 6,
             static_cast<uint16_t>(1024 + i),      9000,         0x02};
    dp.from_client(build(syn));
  }
  CHECK(dp.stack.half_open() == 256);
  CHECK(dp.stack.counters().syn_cookies_sent == 300 - 256);
  dp.take();
  for (bool v6 : {false, true}) {
    INFO((v6 ? "IPv6" : "IPv4"));
    std::string client = v6 ? "2001:db8:1::5" : "198.51.100.5";
    std::string reply = http_get(dp, client, v6 ? "2001:db8::10" : "192.0.2.10", 40000);
    CHECK(reply.find("\"app\":\"blue\"") != std::string::npos);
  }
  CHECK(dp.stack.counters().syn_cookies_accepted == 2);
  CHECK(dp.stack.app_counters()[0].syn_cookies == 2);
  CHECK(dp.stack.half_open() == 256);  // the real clients' handshakes left nothing behind
  // An ACK that guesses a cookie is not taken: lwIP answers it with a RST.
  Spec guess{"198.51.100.9", "192.0.2.10", 6, 40001, 9000, 0x10};
  guess.ack = 0x12345678;
  dp.from_client(build(guess));
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  CHECK((out[0][l4_of(out[0]) + 13] & 0x04) != 0);
  CHECK(dp.stack.counters().syn_cookies_accepted == 2);
  CHECK(dp.stack.counters().lwip_asserts == 0);
}

TEST_CASE("per-connection allocation: each connection its own p2, served by its client's app") {
  DataPath dp(config(std::string("[vpm]\nallocation = \"per-connection\"\n") + kConfig));
  std::string first = http_get(dp, "198.51.100.5", "192.0.2.10", 40000);
  std::string second = http_get(dp, "198.51.100.6", "192.0.2.10", 40000);
  INFO(first << second);
  CHECK(first.find("\"app\":\"blue\"") != std::string::npos);
  CHECK(second.find("\"app\":\"blue\"") != std::string::npos);
  auto p2_of = [](const std::string& r) { return r.substr(r.find("\"p2\":"), 11); };
  CHECK(p2_of(first) != p2_of(second));  // both connections are still in the flow table

  // A green client's datagram, on a p2 of its own, reaches green's echo.
  Spec u{"203.0.113.5", "192.0.2.10", 17, 5353, 9000, 0, {'h', 'i'}};
  REQUIRE(dp.from_client(build(u)).verdict == vpm::Verdict::translated);
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  CHECK(payload_of(out[0]) == Bytes{'h', 'i'});
  CHECK(get16(out[0], 20) == 9000);
}

TEST_CASE("UDP echo for the green app over IPv6, and ICMP echo from the stack") {
  DataPath dp(config(kConfig));
  Spec u{"2001:db8:2::9", "2001:db8::10", 17, 5353, 9000, 0, {'h', 'i', '!'}};
  REQUIRE(dp.from_client(build(u)).verdict == vpm::Verdict::translated);
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  CHECK(get16(out[0], 40) == 9000);
  CHECK(get16(out[0], 42) == 5353);
  CHECK(payload_of(out[0]) == Bytes{'h', 'i', '!'});
  CHECK(l4_checksum_ok(out[0]));

  Spec ping{"203.0.113.5", "192.0.2.10", 1, 0, 0, 0, {0, 7, 0, 1, 'p'}, 8, 0};
  REQUIRE(dp.from_client(build(ping)).verdict == vpm::Verdict::passed);
  out = dp.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0][20] == 0);  // echo reply
  CHECK(l4_checksum_ok(out[0]));
}

// lwIP reassembles fragmented IPv6 datagrams, chaining the fragments it
// holds through a helper written over each one's header (our patch 0006
// keeps its pointer aligned). Three fragments, the last first.
TEST_CASE("an IPv6 datagram in three fragments, out of order, is reassembled and echoed") {
  DataPath dp(config(kConfig));
  Bytes text(200);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<uint8_t>('a' + i % 26);
  Bytes whole = build({"2001:db8:2::9", "2001:db8::10", 17, 5353, 9000, 0, text});
  Bytes body(whole.begin() + 40, whole.end());  // UDP header and data: 208 bytes
  auto fragment = [&](size_t at, size_t len, bool more) {
    Bytes f(whole.begin(), whole.begin() + 40);
    put16(f, 4, static_cast<uint16_t>(8 + len));
    f[6] = 44;  // a fragment header follows
    Bytes hdr{17, 0, 0, 0, 0, 0, 0x51, 0x7e};
    put16(hdr, 2, static_cast<uint16_t>(at | (more ? 1 : 0)));
    f.insert(f.end(), hdr.begin(), hdr.end());
    f.insert(f.end(), body.begin() + static_cast<long>(at),
             body.begin() + static_cast<long>(at + len));
    return f;
  };
  CHECK(dp.from_client(fragment(128, 80, false)).verdict == vpm::Verdict::passed);
  CHECK(dp.from_client(fragment(0, 64, true)).verdict == vpm::Verdict::translated);
  CHECK(dp.take().empty());  // a hole at 64 yet
  CHECK(dp.from_client(fragment(64, 64, true)).verdict == vpm::Verdict::passed);
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  CHECK(get16(out[0], 40) == 9000);
  CHECK(get16(out[0], 42) == 5353);
  CHECK(payload_of(out[0]) == text);
  CHECK(l4_checksum_ok(out[0]));
}

// Issue 8: UDP endpoints answered only on the first virtual address (lwIP
// routed every reply through the default netif and dropped those whose
// source was another netif's address).
TEST_CASE("UDP services answer on every virtual address of both families") {
  DataPath dp(config(R"(
[[app]]
name = "first"
aid = 1
listen = ["192.0.2.10:9000", "[2001:db8::10]:9000"]
clients = ["0.0.0.0/0", "::/0"]
serve = "http-info"
[[app]]
name = "echo"
aid = 2
listen = ["192.0.2.30:9000/udp", "192.0.2.31:9000/udp", "[2001:db8::30]:9000/udp"]
clients = ["0.0.0.0/0", "::/0"]
serve = "echo"
[[app]]
name = "info"
aid = 3
listen = ["192.0.2.40:9000/udp", "[2001:db8::40]:9000/udp"]
clients = ["0.0.0.0/0", "::/0"]
serve = "http-info"
)"));
  struct Case {
    const char *client, *vip, *answer;
  } cases[] = {
      {"198.51.100.5", "192.0.2.30", "ping"},
      {"198.51.100.5", "192.0.2.31", "ping"},
      {"2001:db8:1::5", "2001:db8::30", "ping"},
      {"198.51.100.5", "192.0.2.40", "\"app\":\"info\""},
      {"2001:db8:1::5", "2001:db8::40", "\"app\":\"info\""},
  };
  for (const auto& c : cases) {
    INFO(c.vip);
    Spec u{c.client, c.vip, 17, 5353, 9000, 0, {'p', 'i', 'n', 'g'}};
    REQUIRE(dp.from_client(build(u)).verdict == vpm::Verdict::translated);
    auto out = dp.take();
    REQUIRE(out.size() == 1);
    size_t l4 = l4_of(out[0]);
    CHECK(get16(out[0], l4) == 9000);
    CHECK(get16(out[0], l4 + 2) == 5353);
    CHECK(l4_checksum_ok(out[0]));
    Bytes pl = payload_of(out[0]);
    CHECK(std::string(pl.begin(), pl.end()).find(c.answer) != std::string::npos);
  }
  CHECK(dp.stack.counters().udp_send_errors == 0);
}

// A client of the green echo (203.0.113.5:`port`) that opens a connection,
// sends 8000-byte segments as far as the advertised window lets it, and
// never acknowledges what comes back; `after_each` runs after each segment.
struct NeverReads {
  int sent = 0;         // segments
  uint32_t bytes = 0;   // payload sent
  uint16_t window = 0;  // the last window the stack advertised
};
template <typename AfterEach>
NeverReads send_never_reading(DataPath& dp, uint16_t port, AfterEach after_each) {
  Spec syn{"203.0.113.5", "192.0.2.10", 6, port, 9000, 0x02};
  syn.seq = 5000;
  dp.from_client(build(syn));
  auto out = dp.take();
  REQUIRE(out.size() == 1);
  uint32_t sseq = get32(out[0], 24);
  NeverReads r;
  r.window = 0xffff;
  for (; r.sent < 1200 && r.window > 0; ++r.sent) {
    Spec d{"203.0.113.5", "192.0.2.10", 6, port, 9000, 0x18, Bytes(8000, 'x')};
    d.seq = 5001 + r.bytes;
    d.ack = sseq + 1;
    d.payload.resize(std::min<size_t>(8000, r.window));
    dp.from_client(build(d));
    r.bytes += static_cast<uint32_t>(d.payload.size());
    for (auto& p : dp.take())
      if (p[33] & 0x10) r.window = get16(p, 34);
    after_each();
  }
  return r;
}

TEST_CASE("echo holds back its window instead of buffering without bound") {
  DataPath dp(config(kConfig));
  // Send data and never acknowledge what comes back. Echo may queue up to
  // its send buffer (4 MiB); beyond that it stops acknowledging, so the
  // window it advertises (unscaled here: our SYN had no window scale) must
  // fall to zero within another 4 MiB, and stay there.
  NeverReads r = send_never_reading(dp, 41000, [] {});
  INFO("segments sent: " << r.sent);
  CHECK(r.sent > 8);  // the window was open to begin with
  CHECK(r.window == 0);
  CHECK(r.bytes <= 8u * 1024 * 1024 + 65535);  // bounded by send buffer + receive window
}

// Issue 8: memory under clients that never read. With stack_memory_mb at
// its minimum (16), many such clients fill their windows; the stack must
// stay within the bound and still answer a newcomer. (Deferring a client's
// data needs scaled windows: tests/netns/hostile.sh, scene memory.)
TEST_CASE("clients that never read cannot take the stack past its memory bound") {
  DataPath dp(config(std::string("[vpm]\nstack_memory_mb = 16\n") + kConfig));
  const auto& mem = stack::stack_memory();
  REQUIRE(mem.limit == 16u << 20);
  // Our SYNs carry no window scale: each client holds at most 64 KiB unread
  // and 64 KiB queued back, so 100 of them pass half the bound.
  for (uint16_t port = 42000; port < 42100; ++port)
    send_never_reading(dp, port, [&] { CHECK(mem.in_use <= mem.limit); });
  CHECK(mem.pressed());  // past half the bound: send queues were held to 64 KiB each
  std::string reply = http_get(dp, "198.51.100.5", "192.0.2.10", 40000);
  CHECK(reply.find("\"app\":\"blue\"") != std::string::npos);
}

TEST_CASE("the daemon's packet plumbing over an in-memory device") {
  tun::FakeDevice device;
  tun::Daemon daemon(config(kConfig), device, {});
  // A client no app claims: refused with a RST written back to the device.
  Spec syn{"192.0.2.99", "192.0.2.10", 6, 40000, 9000, 0x02};
  syn.seq = 41;
  device.inbound.push_back(build(syn));
  // A green client's UDP datagram: echoed through lwIP, translated back.
  device.inbound.push_back(build({"203.0.113.5", "192.0.2.10", 17, 5353, 9000, 0, {'x'}}));
  daemon.drain_device(0);
  REQUIRE(device.written.size() == 2);
  const Bytes& rst = device.written[0];
  CHECK(rst[33] == 0x14);
  CHECK(get32(rst, 28) == 42);
  CHECK(l4_checksum_ok(rst));
  const Bytes& echo = device.written[1];
  CHECK(get16(echo, 20) == 9000);
  CHECK(payload_of(echo) == Bytes{'x'});
  CHECK(daemon.counters().refusals_sent == 1);
  CHECK(daemon.engine().counters().by_reason[static_cast<size_t>(vpm::Drop::unmatched)] == 1);
}

// With a device that segments (TSO), lwIP sends segments larger than the
// client's MSS and each leaves with that MSS, for the device to cut to;
// without, no segment is larger than the MSS the client announced.
TEST_CASE("segments larger than the client's MSS only go to a device that cuts them") {
  for (bool segmenting : {true, false}) {
    CAPTURE(segmenting);
    tun::FakeDevice device;
    device.segmenting = segmenting;
    tun::Daemon daemon(config(kConfig), device, {});
    Spec syn{"203.0.113.5", "192.0.2.10", 6, 41000, 9000, 0x02};  // no MSS option: 536
    syn.seq = 5000;
    device.inbound.push_back(build(syn));
    daemon.drain_device(0);
    REQUIRE(device.written.size() == 1);
    uint32_t sseq = get32(device.written[0], 24);
    Spec ack{"203.0.113.5", "192.0.2.10", 6, 41000, 9000, 0x10};
    ack.seq = 5001;
    ack.ack = sseq + 1;
    device.inbound.push_back(build(ack));
    Spec data = ack;
    data.tcp_flags = 0x18;
    data.payload = Bytes(8000, 'e');
    device.inbound.push_back(build(data));  // echoed back by green
    daemon.drain_device(0);
    size_t largest = 0;
    for (size_t i = 1; i < device.written.size(); ++i) {
      size_t len = payload_of(device.written[i]).size();
      largest = std::max(largest, len);
      if (len > 0) CHECK(device.written_mss[i] == 536);
    }
    if (segmenting)
      CHECK(largest > 536);
    else
      CHECK(largest == 536);
  }
}

// lwIP drops a segment whose checksum is wrong, unless the device said the
// kernel vouches for it (then nobody sums the data twice).
TEST_CASE("lwIP checks TCP checksums except where the device vouches for them") {
  for (bool verified : {false, true}) {
    CAPTURE(verified);
    DataPath dp(config(kConfig));
    Spec syn{"203.0.113.5", "192.0.2.10", 6, 41000, 9000, 0x02};
    Bytes p = build(syn);
    p[20 + 16] ^= 0x5a;  // break the TCP checksum
    REQUIRE(dp.engine.to_stack(p, 0).verdict == vpm::Verdict::translated);
    dp.stack.input(p, vpm::kNoApp, verified);
    CHECK(dp.take().size() == (verified ? 1u : 0u));  // the SYN-ACK, or nothing
  }
}

// The control protocol's answers, without a socket: verbs, filters, errors.
TEST_CASE("the daemon answers stats, table and apps, and names what it cannot") {
  tun::FakeDevice device;
  tun::Daemon daemon(config(kConfig), device, {});
  device.inbound.push_back(build({"203.0.113.5", "192.0.2.10", 17, 5353, 9000, 0, {'x'}}));
  daemon.drain_device(0);
  auto [ok, stats] = daemon.answer("stats json");
  CHECK(ok);
  CHECK(stats.find("\"packets_in\":1,") != std::string::npos);
  CHECK(stats.find("\"translated\":2,") != std::string::npos);  // the datagram and its echo
  auto [table_ok, table] = daemon.answer("table app=green");
  CHECK(table_ok);
  CHECK(table.find("udp   203.0.113.5:5353") == table.find('\n') + 1);  // the header, then the flow
  CHECK(daemon.answer("table app=green json")
            .second.starts_with("[{\"proto\":\"udp\",\"client\":\"203.0.113.5:5353\","));
  CHECK(daemon.answer("table app=blue json") == std::pair<bool, std::string>{true, "[]\n"});
  CHECK(
      daemon.answer("apps json").second.find("\"name\":\"green\",\"aid\":102,\"draining\":false") !=
      std::string::npos);
  CHECK(daemon.answer("apps").second.find("green (aid 102): echo") != std::string::npos);
  CHECK(daemon.answer("table app=nosuch") ==
        std::pair<bool, std::string>{false, "no app is named 'nosuch'\n"});
  CHECK_FALSE(daemon.answer("table client=10.0.0.1/99").first);
  CHECK_FALSE(daemon.answer("reboot").first);
  CHECK_FALSE(daemon.answer("").first);
}

// A forward's UDP session to its backend is closed after [timeouts] udp idle.
TEST_CASE("idle UDP sessions to a backend expire") {
  int backend = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof at;
  REQUIRE(::bind(backend, reinterpret_cast<sockaddr*>(&at), sizeof at) == 0);
  REQUIRE(::getsockname(backend, reinterpret_cast<sockaddr*>(&at), &len) == 0);
  auto cfg = config(fmt::format(R"(
[timeouts]
udp = "1s"
[[app]]
name = "dns"
aid = 7
listen = ["192.0.2.10:53/udp"]
clients = ["203.0.113.0/24"]
forward = "127.0.0.1:{}"
)",
                                ntohs(at.sin_port)));
  tun::FakeDevice device;
  tun::Daemon daemon(cfg, device, {});
  device.inbound.push_back(build({"203.0.113.5", "192.0.2.10", 17, 5353, 53, 0, {'q'}}));
  daemon.drain_device(tun::monotonic_ms());
  char got = 0;
  CHECK(::recv(backend, &got, 1, 0) == 1);  // forwarded
  CHECK(got == 'q');
  daemon.tick(tun::monotonic_ms());
  CHECK(daemon.stack().counters().udp_sessions_expired == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  daemon.tick(tun::monotonic_ms());
  CHECK(daemon.stack().counters().udp_sessions_expired == 1);
  ::close(backend);
}

TEST_CASE("TIME_WAIT: a SYN older than the closed connection is only acknowledged, a newer one gets in") {
  DataPath dp(config(kConfig));
  uint32_t fin_seq = 0;
  http_get(dp, "198.51.100.5", "192.0.2.10", 40000, &fin_seq);
  // The client acknowledges the server's FIN and closes: the server side is in TIME_WAIT.
  Spec fin{"198.51.100.5", "192.0.2.10", 6, 40000, 9000, 0x11};
  fin.seq = 1001 + static_cast<uint32_t>(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n").size());
  fin.ack = fin_seq + 1;
  REQUIRE(dp.from_client(build(fin)).verdict == vpm::Verdict::translated);
  dp.take();

  auto answer_to_syn = [&](uint32_t isn) {
    Spec syn{"198.51.100.5", "192.0.2.10", 6, 40000, 9000, 0x02};
    syn.seq = isn;
    dp.from_client(build(syn));
    auto out = dp.take();
    REQUIRE(out.size() == 1);
    return out[0][l4_of(out[0]) + 13];
  };
  CHECK(answer_to_syn(500) == 0x10);      // an old duplicate: TIME_WAIT acknowledges it
  CHECK(answer_to_syn(900000) == 0x12);   // a new connection: SYN-ACK
  CHECK(answer_to_syn(900000) == 0x12);   // its SYN again (no TIME_WAIT left to find)
}
