// Cooperative negotiation messages: sealed, opened, refused when altered,
// forged, expired or replayed.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/coop_wire.hpp"

using namespace testpkt;
using namespace vpm::coop;

namespace {

const std::vector<uint8_t> kKey(32, 0x5a);
const std::vector<uint8_t> kOtherKey(32, 0xa5);
constexpr uint64_t kNow = 1'800'000'000'000;

Header header(uint8_t first, uint64_t expiry = kNow + 5000) {
  Header h;
  h.nonce.fill(first);
  h.expiry_ms = expiry;
  return h;
}
vpm::Endpoint ep(const char* text) { return *vpm::Endpoint::parse(text, nullptr); }

}  // namespace

TEST_CASE("negotiation messages survive seal and open") {
  Nonce ask_nonce = header(1).nonce;
  Message cases[] = {
      Ask{header(1), ep("198.51.100.7:40000"), ep("192.0.2.10:9000"), vpm::Proto::tcp},
      Ask{header(2), ep("[2001:db8::7]:40000"), ep("[2001:db8::10]:9000"), vpm::Proto::udp},
      Offer{header(3),
            ask_nonce,
            ep("198.51.100.7:40000"),
            ep("192.0.2.10:9000"),
            vpm::Proto::tcp,
            22000,
            {101, 102}},
      Offer{header(4),
            ask_nonce,
            ep("198.51.100.7:40000"),
            ep("192.0.2.10:9000"),
            vpm::Proto::tcp,
            22000,
            {}},
      Ack{header(5), header(3).nonce, ep("198.51.100.7:40000"), ep("192.0.2.10:9000"), 22000, 101},
      Refuse{header(6), ask_nonce, Reason::aid_mismatch},
  };
  for (const auto& m : cases) {
    std::string why;
    auto back = open(seal(m, kKey), kKey, kNow, &why);
    INFO(why);
    REQUIRE(back);
    CHECK(*back == m);
  }
}

TEST_CASE("a negotiation message is refused when forged, altered, expired or malformed") {
  Ack ack{header(5), header(3).nonce, ep("198.51.100.7:40000"), ep("192.0.2.10:9000"), 22000, 101};
  Bytes good = seal(ack, kKey);
  auto flip = [](Bytes b, size_t at) { return b[at] ^= 1, b; };
  auto cut = [](Bytes b, size_t n) { return b.resize(n), b; };
  struct Case {
    const char* what;
    Bytes bytes;
    uint64_t now;
    const char* why;
  } cases[] = {
      {"sealed with another key", seal(ack, kOtherKey), kNow,
       "MAC does not match (another key, or altered)"},
      {"the AID altered (a forged AID)", flip(good, good.size() - 33), kNow,
       "MAC does not match (another key, or altered)"},
      {"the MAC altered", flip(good, good.size() - 1), kNow,
       "MAC does not match (another key, or altered)"},
      {"expired", good, kNow + 5001, "expired"},
      {"expiry too far ahead", seal(Ack{header(5, kNow + 60000)}, kKey), kNow,
       "expiry too far ahead"},
      {"another version",
       [&] {
         Bytes b = good;
         b[0] = 2;
         return b;
       }(),
       kNow, "unknown version"},
      {"cut", cut(good, good.size() - 1), kNow, "length disagrees"},
      {"too short", Bytes(20, 0), kNow, "shorter than a header and a MAC"},
      {"too long", Bytes(kMaxMessage + 1, 0), kNow, "longer than 512 bytes"},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    std::string why;
    CHECK_FALSE(open(k.bytes, kKey, k.now, &why));
    CHECK(why == k.why);
  }
}

TEST_CASE("a nonce is taken once while it lives, and the cache stays bounded") {
  NonceCache cache(3);
  auto n = [](uint8_t b) { return header(b).nonce; };
  CHECK(cache.first_use(n(1), kNow + 1000, kNow));
  CHECK_FALSE(cache.first_use(n(1), kNow + 1000, kNow + 10));  // a replay
  CHECK(cache.first_use(n(2), kNow + 1000, kNow));
  CHECK(cache.first_use(n(3), kNow + 2000, kNow));
  CHECK_FALSE(cache.first_use(n(4), kNow + 2000, kNow));  // full of live nonces: refused
  CHECK(cache.size() == 3);
  // Once 1 and 2 have expired there is room again; 1 itself would be
  // refused by open() as expired.
  CHECK(cache.first_use(n(4), kNow + 3000, kNow + 1500));
  CHECK(cache.size() == 2);
}
