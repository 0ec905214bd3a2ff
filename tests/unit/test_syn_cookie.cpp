// SYN cookies: the hash, the cookie's round trip, and the handshake packets.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/syn_cookie.hpp"

using namespace testpkt;

TEST_CASE("SipHash-2-4 gives the reference vectors") {
  vpm::SipKey key{0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
  Bytes msg;
  CHECK(vpm::siphash24(key, msg) == 0x726fdb47dd0e0e31ull);
  for (uint8_t i = 0; i < 15; ++i) msg.push_back(i);
  CHECK(vpm::siphash24(key, msg) == 0xa129ca6149be45e5ull);
}

TEST_CASE("a cookie holds for its tuple in its slot and the next, and carries the MSS") {
  vpm::SynCookies cookies({12345, 67890});
  vpm::TcpTuple t{addr("198.51.100.5"), addr("192.0.2.10"), 40000, 20001};
  uint32_t c = cookies.make(t, 1460, 1000);
  struct Case {
    const char* what;
    vpm::TcpTuple tuple;
    uint32_t cookie;
    uint64_t at_ms;
    std::optional<uint16_t> mss;
  } cases[] = {
      {"same slot", t, c, 2000, 1460},
      {"next slot", t, c, 64000 + 1000, 1460},
      {"two slots later: expired", t, c, 128000 + 1000, std::nullopt},
      {"another client port", {t.client, t.vaddr, 40001, t.vport}, c, 2000, std::nullopt},
      {"another client", {addr("198.51.100.6"), t.vaddr, 40000, t.vport}, c, 2000, std::nullopt},
      {"a guessed number", t, c ^ 0x100, 2000, std::nullopt},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    CHECK(cookies.check(k.tuple, k.cookie, k.at_ms) == k.mss);
  }
  // The MSS is rounded down to the table; an odd one never rounds up.
  CHECK(cookies.check(t, cookies.make(t, 1400, 0), 0) == 1360);
  CHECK(cookies.check(t, cookies.make(t, 100, 0), 0) == 536);
  CHECK(cookies.check(t, cookies.make(t, 65495, 0), 0) == 65483);
  // Another key makes other cookies.
  vpm::SynCookies other({1, 2});
  CHECK_FALSE(other.check(t, c, 2000));
}

TEST_CASE("the cookie handshake's packets: our SYN-ACK, and the client's SYN rebuilt") {
  for (bool v6 : {false, true}) {
    INFO((v6 ? "IPv6" : "IPv4"));
    const char* client = v6 ? "2001:db8:1::5" : "198.51.100.5";
    const char* vip = v6 ? "2001:db8::10" : "192.0.2.10";
    Spec s{client, vip, 6, 40000, 20001, 0x02};
    s.seq = 777;
    Bytes syn = build(s);
    Bytes synack;
    REQUIRE(vpm::build_syn_ack(syn, 0xabcdef01, 1460, synack));
    size_t l4 = l4_of(synack);
    CHECK(get16(synack, l4) == 20001);
    CHECK(get16(synack, l4 + 2) == 40000);
    CHECK(get32(synack, l4 + 4) == 0xabcdef01);
    CHECK(get32(synack, l4 + 8) == 778);
    CHECK(synack[l4 + 13] == 0x12);
    CHECK(get16(synack, l4 + 22) == 1460);
    CHECK(l4_checksum_ok(synack));

    Spec a{client, vip, 6, 40000, 20001, 0x10};
    a.seq = 778;
    a.ack = 0xabcdef02;
    Bytes rebuilt;
    REQUIRE(vpm::build_opening_syn(build(a), 1360, rebuilt));
    CHECK(get16(rebuilt, l4) == 40000);
    CHECK(get16(rebuilt, l4 + 2) == 20001);
    CHECK(get32(rebuilt, l4 + 4) == 777);
    CHECK(rebuilt[l4 + 13] == 0x02);
    CHECK(get16(rebuilt, l4 + 22) == 1360);
    CHECK(l4_checksum_ok(rebuilt));
    // Not the packets they answer: no SYN-ACK for an ACK, no SYN from a SYN.
    CHECK_FALSE(vpm::build_syn_ack(build(a), 1, 1460, synack));
    CHECK_FALSE(vpm::build_opening_syn(syn, 1460, rebuilt));
    CHECK(synack.empty());
  }
}
