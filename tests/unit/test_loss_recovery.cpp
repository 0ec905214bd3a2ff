// Loss recovery of the embedded stack as a sender (lwIP patch 0003): with
// the TUN's offloads it sends segments of up to 65000 bytes, which the
// kernel cuts to the client's MSS. A client that reports one of them lost
// with a single SACK gets it again at once; an ACK that never comes is
// answered by a probe long before the retransmission timeout.
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "packets.hpp"
#include "tun/daemon.hpp"

using namespace testpkt;

namespace {

const char* kEcho = R"(
[[app]]
name = "echo"
aid = 7
listen = ["192.0.2.10:9000"]
clients = ["203.0.113.0/24"]
serve = "echo"
)";

Bytes be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}

struct Segment {
  uint32_t seq;
  size_t len;
  uint8_t flags;
};

struct SegmentingDevice : tun::FakeDevice {
  SegmentingDevice() { segmenting = true; }
};

// A client of the echo app behind a device that cuts large segments.
struct Client {
  SegmentingDevice device;
  tun::Daemon daemon{config(kEcho), device, {}};
  uint32_t seq = 5000, server_next = 0;  // the client's next byte; the server's first unacked

  Spec packet(uint8_t flags) {
    Spec s{"203.0.113.5", "192.0.2.10", 6, 41000, 9000, flags};
    s.seq = seq;
    s.ack = server_next;
    return s;
  }
  // Sends `p`; returns the data segments written back.
  std::vector<Segment> send(const Bytes& p, uint64_t now_ms = 0) {
    device.inbound.push_back(p);
    daemon.drain_device(now_ms);
    return take();
  }
  std::vector<Segment> take() {
    std::vector<Segment> out;
    for (auto& w : device.written)
      if (size_t len = payload_of(w).size(); len > 0) {
        if (len <= 1460) CHECK(l4_checksum_ok(w));  // larger ones: the device completes it
        out.push_back({get32(w, 24), len, w[33]});
      }
    device.written.clear();
    return out;
  }

  void handshake() {
    // MSS 1460, SACK permitted, window scale 7.
    Bytes options{2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1};
    device.inbound.push_back(with_options(build(packet(0x02)), options));
    daemon.drain_device(0);
    REQUIRE(device.written.size() == 1);
    server_next = get32(device.written[0], 24) + 1;
    device.written.clear();
    ++seq;
    send(build(packet(0x10)));
  }
  // `bytes` of data for the echo, which it sends back.
  std::vector<Segment> echo(size_t bytes) {
    Spec data = packet(0x18);
    data.payload = Bytes(bytes, 'x');
    seq += static_cast<uint32_t>(bytes);
    return send(build(data));
  }
  // A pure ACK of everything before `ack`, with a SACK block if `sacked`.
  std::vector<Segment> acknowledge(uint32_t ack, const Segment* sacked = nullptr) {
    server_next = ack;
    Bytes p = build(packet(0x10));
    if (!sacked) return send(p);
    Bytes block{1, 1, 5, 10};
    for (uint32_t edge : {sacked->seq, sacked->seq + static_cast<uint32_t>(sacked->len)}) {
      Bytes b = be32(edge);
      block.insert(block.end(), b.begin(), b.end());
    }
    return send(with_options(p, block));
  }
};

}  // namespace

TEST_CASE("one SACK past a hole: the hole goes again at once, and only the hole") {
  // (One stack at a time: lwIP is one instance per process.)
  auto two_segments = [](Client& c) {
    c.handshake();
    auto sent = c.echo(60000);
    auto more = c.echo(60000);
    sent.insert(sent.end(), more.begin(), more.end());
    REQUIRE(sent.size() >= 2);
    CHECK(sent[0].len > 1460);  // large: the device cuts it
    return sent;
  };
  SECTION("a whole segment lost") {
    Client c;
    auto sent = two_segments(c);
    auto again = c.acknowledge(c.server_next, &sent[1]);
    REQUIRE(!again.empty());
    CHECK(again[0].seq == sent[0].seq);
    CHECK(again[0].len == sent[0].len);
    CHECK((again[0].flags & 0x10) != 0);  // ACK, as every segment after the handshake
  }
  SECTION("one packet of a segment lost") {
    Client c;
    auto sent = two_segments(c);
    // The client got two packets of the first segment, lost the third,
    // and holds the rest.
    uint32_t hole = sent[0].seq + 2 * 1460;
    Segment rest{hole + 1460, sent[0].len - 3 * 1460, 0};
    c.acknowledge(hole);
    auto again = c.acknowledge(hole, &rest);
    REQUIRE(!again.empty());
    CHECK(again[0].seq == hole);
    CHECK(again[0].len == 1460);  // one packet of the client's MSS, not the segment
  }
  SECTION("without a SACK block, one duplicate ACK is not enough (RFC 5681's three)") {
    Client c;
    two_segments(c);
    CHECK(c.acknowledge(c.server_next).empty());
  }
}

TEST_CASE("an ACK that never comes: one probe after two fast-timer ticks, not a timeout") {
  Client c;
  c.handshake();
  auto sent = c.echo(60000);
  auto more = c.echo(60000);
  sent.insert(sent.end(), more.begin(), more.end());
  REQUIRE(sent.size() >= 2);
  // The client got both, but its ACK is lost. The retransmission timeout is
  // seconds away (no round trip measured yet); the probe comes within
  // 50-150 ms, and only once.
  using namespace std::chrono;
  auto start = steady_clock::now();
  std::vector<Segment> probes;
  while (steady_clock::now() - start < milliseconds(400)) {
    std::this_thread::sleep_for(milliseconds(20));
    c.daemon.tick(0);
    auto out = c.take();
    probes.insert(probes.end(), out.begin(), out.end());
  }
  REQUIRE(probes.size() == 1);
  CHECK(probes[0].seq == sent[0].seq);
  // The probe's ACK shows that all arrived: nothing more is sent again.
  uint32_t end = sent.back().seq + static_cast<uint32_t>(sent.back().len);
  for (auto& s : c.acknowledge(end)) CHECK(s.seq >= end);
}

// lwIP patch 0004: out-of-order segments that continue each other are
// queued as one. What the client is told (SACK) and what the app gets
// must not change.
TEST_CASE(
    "past a hole: SACK reports the run as it grows, and the data arrives whole and in order") {
  Client c;
  c.handshake();
  uint32_t base = c.seq;
  auto segment = [&](uint32_t offset, size_t len) {
    Spec s = c.packet(0x18);
    s.seq = base + offset;
    for (size_t i = 0; i < len; ++i) s.payload.push_back(static_cast<uint8_t>((offset + i) % 251));
    c.device.inbound.push_back(build(s));
    c.daemon.drain_device(0);
  };
  // The last ACK written: its cumulative ACK and its first SACK block.
  auto last_ack = [&] {
    REQUIRE(!c.device.written.empty());
    Bytes a = c.device.written.back();
    size_t l4 = l4_of(a), header = static_cast<size_t>(a[l4 + 12] >> 4) * 4;
    std::array<uint32_t, 3> r{get32(a, l4 + 8), 0, 0};
    for (size_t at = l4 + 20; at + 1 < l4 + header;) {
      if (a[at] == 1) {
        ++at;
      } else if (a[at] == 5 && a[at + 1] >= 10) {
        r[1] = get32(a, at + 2);
        r[2] = get32(a, at + 6);
        break;
      } else {
        at += a[at + 1] == 0 ? header : a[at + 1];
      }
    }
    c.device.written.clear();
    return r;
  };
  // The first 1000 bytes are lost; 100 segments of 1000 follow (more than
  // one merged segment holds), then one resent over two of them.
  for (uint32_t i = 1; i <= 100; ++i) {
    segment(i * 1000, 1000);
    CHECK(last_ack() == std::array<uint32_t, 3>{base, base + 1000, base + (i + 1) * 1000});
  }
  segment(40500, 1000);
  CHECK(last_ack() == std::array<uint32_t, 3>{base, base + 1000, base + 101000});
  // A second hole and a run after it: the newest run is reported first.
  segment(102000, 1000);
  CHECK(last_ack() == std::array<uint32_t, 3>{base, base + 102000, base + 103000});
  // The holes filled: everything acknowledged, and echoed back in order.
  segment(101000, 1000);
  segment(0, 1000);
  c.seq = base + 103000;
  uint32_t echo_start = c.server_next;
  Bytes back;
  for (int round = 0; round < 100 && back.size() < 103000; ++round) {
    for (auto& w : c.device.written) {
      Bytes p = payload_of(w);
      if (!p.empty()) CHECK(get32(w, 24) == echo_start + back.size());
      back.insert(back.end(), p.begin(), p.end());
    }
    c.device.written.clear();
    Spec more = c.packet(0x10);  // acknowledges what came, for more of the echo
    more.ack = echo_start + static_cast<uint32_t>(back.size());
    c.device.inbound.push_back(build(more));
    c.daemon.drain_device(0);
  }
  REQUIRE(back.size() == 103000);
  for (size_t i = 0; i < back.size(); ++i)
    if (back[i] != static_cast<uint8_t>(i % 251)) FAIL("byte " << i << " differs");
}
