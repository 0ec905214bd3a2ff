// vpm::AckMerger: which acknowledgements of a batch are merged, and in what order they leave.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "tun/daemon.hpp"
#include "vpm/ack_merge.hpp"
#include "vpm/checksum.hpp"

using namespace testpkt;

namespace {

Bytes ack(uint32_t ackno, uint16_t dport = 40000, uint8_t flags = 0x10, Bytes payload = {}) {
  Spec s{.src = "10.99.0.10", .dst = "10.201.0.2", .sport = 9000, .dport = dport};
  s.tcp_flags = flags;
  s.ack = ackno;
  s.payload = std::move(payload);
  return build(s);
}

struct Written {
  std::vector<uint32_t> acks;
  void operator()(std::span<uint8_t> p) { acks.push_back(vpm::load32(p.data() + 28)); }
};

}  // namespace

TEST_CASE("AckMerger: a later ACK of a connection replaces the one held") {
  vpm::AckMerger m;
  for (uint32_t a : {1000u, 4000u, 7000u}) {
    Bytes p = ack(a);
    REQUIRE(m.take(p));
  }
  Written w;
  m.flush(w);
  CHECK(w.acks == std::vector<uint32_t>{7000});
  CHECK(m.merged() == 2);
  CHECK(m.empty());
}

TEST_CASE("AckMerger: connections are merged apart, in the order they were first held") {
  vpm::AckMerger m;
  Bytes a1 = ack(100, 40000), b1 = ack(500, 40001), a2 = ack(200, 40000);
  REQUIRE(m.take(a1));
  REQUIRE(m.take(b1));
  REQUIRE(m.take(a2));
  Written w;
  m.flush(w);
  CHECK(w.acks == std::vector<uint32_t>{200, 500});
}

TEST_CASE("AckMerger: duplicate and older ACKs are each written") {
  vpm::AckMerger m;
  Bytes first = ack(5000), dup = ack(5000), older = ack(4000);
  REQUIRE(m.take(first));
  REQUIRE(m.take(dup));  // a duplicate ACK counts towards the sender's fast retransmit
  REQUIRE(m.take(older));
  Written w;
  m.flush(w);
  CHECK(w.acks == std::vector<uint32_t>{5000, 5000, 4000});
  CHECK(m.merged() == 0);
}

namespace {

// An ACK of `ackno` with one SACK block [left, right).
Bytes sack(uint32_t ackno, uint32_t left, uint32_t right) {
  Bytes options{1, 1, 5, 10};
  for (uint32_t edge : {left, right})
    for (int k = 3; k >= 0; --k) options.push_back(static_cast<uint8_t>(edge >> (8 * k)));
  return with_options(ack(ackno), options);
}

uint32_t sack_right(std::span<uint8_t> p) { return vpm::load32(p.data() + 48); }

}  // namespace

TEST_CASE("AckMerger: ACKs with SACK blocks replace each other, not a plain one") {
  vpm::AckMerger m;
  Bytes plain = ack(5000), s1 = sack(5000, 6000, 7000), s2 = sack(5000, 6000, 8000),
        s3 = sack(5000, 6000, 9000), older = sack(4000, 6000, 9500);
  for (Bytes* p : {&plain, &s1, &s2, &s3, &older}) REQUIRE(m.take(*p));
  std::vector<uint32_t> right;
  Written w;
  m.flush([&](std::span<uint8_t> p) {
    w(p);
    right.push_back(p.size() > 40 ? sack_right(p) : 0);
  });
  CHECK(w.acks == std::vector<uint32_t>{5000, 5000, 4000});
  CHECK(right == std::vector<uint32_t>{0, 9000, 9500});
  CHECK(m.merged() == 2);
  SECTION("the hole filled: a plain ACK past the blocks replaces them") {
    Bytes a = sack(5000, 6000, 7000), b = ack(7000);
    REQUIRE(m.take(a));
    REQUIRE(m.take(b));
    Written after;
    m.flush(after);
    CHECK(after.acks == std::vector<uint32_t>{7000});
  }
  SECTION("at most kMaxSacksMerged in one") {
    for (uint32_t i = 0; i <= vpm::AckMerger::kMaxSacksMerged + 1; ++i) {
      Bytes p = sack(5000, 6000, 7000 + i);
      REQUIRE(m.take(p));
    }
    Written after;
    m.flush(after);
    CHECK(after.acks.size() == 2);
  }
}

TEST_CASE("AckMerger: an ACK never stands for more than kMaxStretch new bytes") {
  vpm::AckMerger m;
  uint32_t base = 0xffff0000;  // across the wrap of sequence space
  Bytes a = ack(base), b = ack(base + 40000), c = ack(base + vpm::AckMerger::kMaxStretch + 1);
  REQUIRE(m.take(a));
  REQUIRE(m.take(b));
  REQUIRE(m.take(c));
  Written w;
  m.flush(w);
  CHECK(w.acks == std::vector<uint32_t>{base + 40000, base + vpm::AckMerger::kMaxStretch + 1});
}

TEST_CASE("AckMerger: only pure ACKs are taken") {
  vpm::AckMerger m;
  Bytes data = ack(1, 40000, 0x18, Bytes(10, 'x'));
  Bytes fin = ack(1, 40000, 0x11), syn_ack = ack(1, 40000, 0x12), rst = ack(1, 40000, 0x14);
  Bytes udp =
      build({.src = "10.99.0.10", .dst = "10.201.0.2", .proto = 17, .sport = 9000, .dport = 40000});
  Bytes cut = ack(1);
  cut.resize(30);
  for (Bytes* p : {&data, &fin, &syn_ack, &rst, &udp, &cut}) CHECK_FALSE(m.take(*p));
  // Options that cannot be read: written as they are.
  Bytes bad = with_options(ack(1), {8, 1, 0, 0});
  CHECK_FALSE(m.take(bad));
  CHECK(m.empty());
}

TEST_CASE("AckMerger: with kMaxHeld connections held, another is refused") {
  vpm::AckMerger m;
  for (size_t i = 0; i < vpm::AckMerger::kMaxHeld; ++i) {
    Bytes p = ack(1, static_cast<uint16_t>(30000 + i));
    REQUIRE(m.take(p));
  }
  Bytes extra = ack(1, 20000);
  CHECK_FALSE(m.take(extra));
  Bytes again = ack(2, 30000);  // one already held still merges
  CHECK(m.take(again));
}

TEST_CASE("the daemon: a train from a client is acknowledged once per 64 KiB") {
  tun::FakeDevice device;
  tun::Daemon daemon(config(R"(
[[app]]
name = "sink"
aid = 7
listen = ["192.0.2.10:9000"]
clients = ["203.0.113.0/24"]
serve = "discard"
)"),
                     device, {});
  Spec s{"203.0.113.5", "192.0.2.10", 6, 41000, 9000, 0x02};
  s.seq = 1000;
  device.inbound.push_back(build(s));
  daemon.drain_device(0);
  REQUIRE(device.written.size() == 1);
  s.ack = get32(device.written[0], 24) + 1;
  s.seq = 1001;
  s.tcp_flags = 0x10;
  device.inbound.push_back(build(s));
  daemon.drain_device(0);
  device.written.clear();

  // One batch: `n` segments of 1000 bytes read one after another.
  auto train = [&](int n) {
    s.tcp_flags = 0x18;
    s.payload = Bytes(1000, 'x');
    for (int i = 0; i < n; ++i) {
      device.inbound.push_back(build(s));
      s.seq += 1000;
    }
    daemon.drain_device(0);
    std::vector<uint32_t> acks;
    for (auto& w : device.written) {
      REQUIRE(payload_of(w).empty());
      CHECK(w[33] == 0x10);
      acks.push_back(get32(w, 28));
    }
    device.written.clear();
    return acks;
  };
  auto acks = train(40);  // lwIP acknowledges every second one: 20 ACKs, merged to one
  CHECK(acks == std::vector<uint32_t>{s.seq});
  CHECK(daemon.acks_merged() == 19);
  acks = train(100);  // 100,000 bytes: one ACK cannot stand for all of them
  REQUIRE(acks.size() == 2);
  uint32_t first = s.seq - 100000 + 2000;  // what the first ACK lwIP sent acknowledged
  CHECK(acks[0] - first <= vpm::AckMerger::kMaxStretch);
  CHECK(acks[1] == s.seq);
}
