// The application library's wire: messages, the bind rule, the peer table.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/app_wire.hpp"

using namespace testpkt;
using namespace vpm::appwire;
using vpm::Proto;

TEST_CASE("library messages survive encode and decode") {
  Bind v6{Proto::udp, true, true, addr("2001:db8::10"), 9000, 41234};
  Welcome w{Status::ok,
            "",
            {{Proto::tcp, addr("192.0.2.10"), 9000}, {Proto::udp, addr("2001:db8::10"), 53}},
            {{Proto::tcp, addr("198.51.100.10"), 6379}}};
  Message cases[] = {
      Hello{"blue", "redis-server --port 9000"},
      Hello{"", ""},
      w,
      Welcome{Status::not_allowed, "uid 1000 may not run app 'blue'", {}},
      Bind{Proto::tcp, false, false, addr("0.0.0.0"), 9000, 40000},
      v6,
      Bound{Status::ok, ""},
      Bound{Status::not_listened, "app 'blue' does not listen on udp 9001"},
      Dial{"blue-client", *vpm::Endpoint::parse("10.1.0.2:40000", nullptr),
           *vpm::Endpoint::parse("[2001:db8::10]:9000", nullptr)},
      Dialed{Status::ok, "", 21034},
      Dialed{Status::refused, "aid 7 is not among those offered", 0},
  };
  for (const auto& m : cases) {
    std::string why;
    auto back = decode(encode(m), &why);
    INFO(why);
    REQUIRE(back);
    CHECK(*back == m);
  }
}

TEST_CASE("malformed library messages are refused with a reason") {
  Bytes hello = encode(Hello{"blue", "x"});
  Bytes bind = encode(Bind{Proto::tcp, false, false, addr("0.0.0.0"), 9000, 40000});
  auto with = [](Bytes b, size_t at, uint8_t v) { return b[at] = v, b; };
  auto cut = [](Bytes b, size_t n) { return b.resize(n), b; };
  Bytes long_name = encode(Hello{std::string(64, 'a'), ""});
  long_name[5] = 65;  // claims 65 bytes of name
  struct Case {
    const char* what;
    Bytes bytes;
    const char* why;
  } cases[] = {
      {"empty", {}, "shorter than its 4-byte header"},
      {"header only, cut", {1, 1}, "shorter than its 4-byte header"},
      {"another version", with(hello, 0, 2), "unknown version"},
      {"unknown type", with(hello, 1, 9), "unknown message type"},
      {"unknown status", with(encode(Dialed{Status::ok, "", 1}), 4, 11), "unknown status"},
      {"body length too long", with(hello, 3, 200), "body length disagrees with the message"},
      {"cut inside a string", cut(with(hello, 3, 7), 11), "fields do not fill the body"},
      {"a string past its bound", long_name, "fields do not fill the body"},
      {"unknown protocol", with(bind, 4, 1), "unknown protocol"},
      {"unknown flags", with(bind, 5, 4), "unknown flags"},
      {"trailing bytes",
       [&] {
         Bytes b = bind;
         b.push_back(0);
         b[3] += 1;
         return b;
       }(),
       "fields do not fill the body"},
      {"too long", Bytes(kMaxMessage + 1, 0), "message longer than 2048 bytes"},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    std::string why;
    CHECK_FALSE(decode(k.bytes, &why));
    CHECK(why == k.why);
  }
}

TEST_CASE("the library takes binds of the app's ports, and leaves every other bind alone") {
  std::vector<ListenPort> listens{{Proto::tcp, addr("192.0.2.10"), 9000},
                                  {Proto::udp, addr("192.0.2.10"), 9000},
                                  {Proto::tcp, addr("2001:db8::10"), 9000},
                                  {Proto::tcp, addr("192.0.2.11"), 6379}};
  struct Case {
    const char* what;
    Proto proto;
    const char* address;
    uint16_t port;
    bool taken;
  } cases[] = {
      {"IPv4 wildcard", Proto::tcp, "0.0.0.0", 9000, true},
      {"IPv6 wildcard (dual stack)", Proto::tcp, "::", 9000, true},
      {"loopback", Proto::tcp, "127.0.0.1", 9000, true},
      {"another loopback address", Proto::tcp, "127.0.0.53", 9000, true},
      {"IPv6 loopback", Proto::tcp, "::1", 9000, true},
      {"the virtual address", Proto::tcp, "192.0.2.10", 9000, true},
      {"the IPv6 virtual address", Proto::tcp, "2001:db8::10", 9000, true},
      {"UDP on a UDP listen", Proto::udp, "0.0.0.0", 9000, true},
      {"a second p1 on another vaddr", Proto::tcp, "192.0.2.11", 6379, true},
      {"another port", Proto::tcp, "0.0.0.0", 9001, false},
      {"port 0 (anonymous)", Proto::tcp, "0.0.0.0", 0, false},
      {"UDP where only TCP is listened", Proto::udp, "0.0.0.0", 6379, false},
      {"a host address", Proto::tcp, "198.51.100.1", 9000, false},
      {"another app's vaddr for this p1", Proto::tcp, "192.0.2.11", 9000, false},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    CHECK(takes_bind(listens, k.proto, addr(k.address), k.port) == k.taken);
  }
}

TEST_CASE("VPMTUN_LISTEN round-trips, and bad text is refused") {
  std::vector<ListenPort> listens{{Proto::tcp, addr("192.0.2.10"), 9000},
                                  {Proto::udp, addr("2001:db8::10"), 53}};
  std::string text = format_listens(listens);
  CHECK(text == "tcp/192.0.2.10/9000,udp/2001:db8::10/53");
  CHECK(parse_listens(text) == listens);
  CHECK(parse_listens("") == std::vector<ListenPort>{});
  for (const char* bad :
       {"tcp/192.0.2.10", "sctp/192.0.2.10/9000", "tcp/host/9000", "tcp/192.0.2.10/0",
        "tcp/192.0.2.10/65536", "tcp/192.0.2.10/9x", "tcp/192.0.2.10/9000,"}) {
    INFO(bad);
    CHECK_FALSE(parse_listens(bad));
  }
  using namespace std::string_view_literals;
  CHECK_FALSE(parse_listens("tcp/192.0.2.10\0junk/9000"sv));  // inet_pton alone would stop at the NUL
}

TEST_CASE("the peer table maps relay ports to clients and UDP clients back") {
  std::vector<uint8_t> bytes(PeerTable::kTableBytes);
  PeerTable t(bytes);
  PeerSlot client{true, addr("198.51.100.7"), 40000, addr("192.0.2.10"), 9000, 41000};
  t.set_relay(Proto::tcp, false, 50000, client);
  CHECK(t.relay(Proto::tcp, false, 50000) == client);
  CHECK_FALSE(t.relay(Proto::tcp, true, 50000).valid);   // other family
  CHECK_FALSE(t.relay(Proto::udp, false, 50000).valid);  // other protocol
  t.clear_relay(Proto::tcp, false, 50000);
  CHECK_FALSE(t.relay(Proto::tcp, false, 50000).valid);

  PeerSlot bound{true, addr("::"), 0, {}, 9000, 41000};
  t.set_bind(Proto::tcp, true, 41000, bound);
  CHECK(t.bind(Proto::tcp, true, 41000) == bound);

  // UDP: many clients of one instance, each found again, and gone once unindexed.
  for (uint16_t i = 0; i < 2000; ++i) {
    PeerSlot c{
        true, addr("198.51.100.7"), static_cast<uint16_t>(30000 + i), addr("192.0.2.10"), 9000,
        41001};
    t.set_relay(Proto::udp, false, static_cast<uint16_t>(50000 + i), c);
    REQUIRE(t.index_udp(false, static_cast<uint16_t>(50000 + i), c.addr, c.port, 41001));
  }
  for (uint16_t i = 0; i < 2000; i += 97)
    CHECK(t.find_udp(false, addr("198.51.100.7"), static_cast<uint16_t>(30000 + i), 41001) ==
          50000 + i);
  CHECK(t.find_udp(false, addr("198.51.100.7"), 30000, 41002) == 0);  // another instance
  CHECK(t.find_udp(true, addr("198.51.100.7"), 30000, 41001) == 0);   // another family
  t.unindex_udp(false, 50000, addr("198.51.100.7"), 30000, 41001);
  CHECK(t.find_udp(false, addr("198.51.100.7"), 30000, 41001) == 0);
  CHECK(t.find_udp(false, addr("198.51.100.7"), 30001, 41001) == 50001);

  // A table too small to be one (a bad memfd) reads as empty.
  std::vector<uint8_t> small(100);
  CHECK_FALSE(PeerTable(small).relay(Proto::tcp, false, 1).valid);
}
