// Checksums: incremental updates equal a full recomputation (property, both families).
#include <catch2/catch.hpp>
#include <random>

#include "packets.hpp"
#include "vpm/checksum.hpp"
#include "vpm/engine.hpp"

using namespace testpkt;

TEST_CASE("update16 matches a full recomputation for random data and edits") {
  std::mt19937_64 rng(1624);
  for (int n = 0; n < 100000; ++n) {
    Bytes data(2 + rng() % 64 * 2);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    size_t word = rng() % (data.size() / 2) * 2;
    uint16_t before_sum = reference_checksum(data);
    uint16_t old_word = get16(data, word);
    auto new_word = static_cast<uint16_t>(rng());
    put16(data, word, new_word);
    uint16_t full = reference_checksum(data);
    uint16_t incremental = vpm::update16(before_sum, old_word, new_word);
    // 0x0000 and 0xFFFF are the same number in one's complement; a full
    // recomputation yields 0xFFFF only for all-zero data.
    if (full == 0xffff)
      CHECK((incremental == 0xffff || incremental == 0x0000));
    else
      REQUIRE(incremental == full);
  }
}

// 100k random TCP/UDP packets of both families through the engine: the
// translated checksum always equals a full recomputation, and translating
// back restores the packet byte for byte.
TEST_CASE("engine rewrites keep checksums equal to a full recomputation") {
  auto cfg = config(R"(
[vpm]
port_range = "20000-29999"
max_flows = 1000000
[[app]]
name = "a"
aid = 1
listen = ["192.0.2.10:9000", "192.0.2.10:9000/udp", "[2001:db8::10]:9000", "[2001:db8::10]:9000/udp"]
clients = ["198.51.100.0/24", "2001:db8:1::/48"]
serve = "echo"
)");
  vpm::Engine engine(cfg);
  std::mt19937_64 rng(768);
  int translated = 0;
  for (int n = 0; n < 100000; ++n) {
    bool v6 = rng() & 1;
    bool udp = rng() & 1;
    bool inbound = rng() & 1;
    std::string client = v6 ? "2001:db8:1::" + std::to_string(rng() % 9000 + 1)
                            : "198.51.100." + std::to_string(rng() % 250 + 1);
    std::string vip = v6 ? "2001:db8::10" : "192.0.2.10";
    Spec s{inbound ? client : vip, inbound ? vip : client, static_cast<uint8_t>(udp ? 17 : 6)};
    auto cport = static_cast<uint16_t>(1024 + rng() % 60000);
    s.sport = inbound ? cport : 9000;
    s.dport = inbound ? 9000 : cport;
    s.tcp_flags = 0x10;
    s.payload.resize(rng() % 200);
    for (auto& b : s.payload) b = static_cast<uint8_t>(rng());
    Bytes p = build(s);
    Bytes original = p;
    auto r = engine.to_stack(p, 0);
    INFO(vpm::drop_name(r.reason));
    REQUIRE(r.verdict == vpm::Verdict::translated);
    ++translated;
    REQUIRE(l4_checksum_ok(p));
    size_t l4 = v6 ? 40 : 20;
    uint16_t p2 = get16(p, l4 + (inbound ? 2 : 0));
    CHECK(p2 >= 20000);
    CHECK(p2 <= 29999);
    // Recompute from scratch with the new port and compare the field itself.
    Spec again = s;
    (inbound ? again.dport : again.sport) = p2;
    Bytes full = build(again);
    REQUIRE(get16(p, l4 + (udp ? 6 : 16)) == get16(full, l4 + (udp ? 6 : 16)));
    REQUIRE(engine.to_tun(p, 0).verdict == vpm::Verdict::translated);
    REQUIRE(p == original);
  }
  CHECK(translated == 100000);
}

// sum_words adds whole machine words; it must equal the textbook 16-bit
// big-endian sum for every length and starting offset.
TEST_CASE("sum_words equals the 16-bit word-by-word sum at any length and alignment") {
  std::mt19937_64 rng(1071);
  Bytes data(2100);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (int n = 0; n < 20000; ++n) {
    size_t at = rng() % 16, len = rng() % 2048;
    if (n % 7 == 0) std::fill(data.begin(), data.end(), 0xff);  // the most carries
    std::span<const uint8_t> s(data.data() + at, len);
    uint64_t expected = 0;
    for (size_t i = 0; i < len; i += 2)
      expected += uint32_t{s[i]} << 8 | (i + 1 < len ? s[i + 1] : 0);
    uint64_t start = rng() % 0x10000;
    REQUIRE(vpm::fold(vpm::sum_words(s, start)) == vpm::fold(expected + start));
    if (n % 7 == 0)
      for (auto& b : data) b = static_cast<uint8_t>(rng());
  }
}
