// Cooperative mode where it meets bytes and packets: the server's VPM
// taking messages from a negotiation connection's stream, and the engine
// passing negotiation on p1 and admitting connections to a cooperative p2.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "tun/coop.hpp"
#include "vpm/engine.hpp"

using namespace testpkt;
using namespace vpm::coop;
using vpm::Drop;
using vpm::Verdict;

namespace {

const char* kServer = R"(
[cooperative]
key_file = "k"
[[app]]
name = "store"
aid = 101
listen = ["192.0.2.10:6379"]
clients = ["198.51.100.0/24"]
serve = "echo"
cooperative = true
[[app]]
name = "plain"
aid = 102
listen = ["192.0.2.10:6379"]
clients = ["203.0.113.0/24"]
serve = "echo"
)";

const std::vector<uint8_t> kKey(32, 7);
vpm::Endpoint ep(const char* text) { return *vpm::Endpoint::parse(text, nullptr); }

Ask ask_for(const char* client) {
  return Ask{tun::fresh_header(tun::wall_ms()), ep(client), ep("192.0.2.10:6379"),
             vpm::Proto::tcp};
}

struct Heard {
  size_t taken;
  std::vector<uint8_t> reply;
  stack::Negotiator::End end;
};

Heard hear(tun::CoopServer& s, const std::vector<uint8_t>& stream) {
  Heard h{0, {}, stack::Negotiator::End::keep};
  h.taken = s.heard(stream, ep("198.51.100.5:50000"), ep("192.0.2.10:6379"), h.reply, h.end);
  return h;
}

std::vector<Message> replies(const std::vector<uint8_t>& bytes) {
  std::vector<Message> out;
  for (size_t at = 0; at < bytes.size();) {
    size_t n = frame_size(std::span(bytes).subspan(at));
    REQUIRE((n != kNotOurs && n != 0 && at + n <= bytes.size()));
    std::string why;
    auto m = open(std::span(bytes).subspan(at, n), kKey, tun::wall_ms(), &why);
    INFO(why);
    REQUIRE(m);
    out.push_back(*m);
    at += n;
  }
  return out;
}

}  // namespace

TEST_CASE("the server's VPM takes whole messages from a negotiation stream") {
  auto cfg = config(kServer);
  vpm::Ruleset rules(cfg);
  tun::CoopServer server(rules, kKey);
  Ask ask = ask_for("198.51.100.5:40000");
  auto sealed = seal(ask, kKey);

  SECTION("a message cut in two waits for its end; then an Offer") {
    std::vector<uint8_t> half(sealed.begin(), sealed.begin() + 10);
    Heard h = hear(server, half);
    CHECK(h.taken == 0);
    CHECK(h.reply.empty());
    CHECK(h.end == stack::Negotiator::End::keep);
    h = hear(server, sealed);
    CHECK(h.taken == sealed.size());
    auto got = replies(h.reply);
    REQUIRE(got.size() == 1);
    const auto* offer = std::get_if<Offer>(&got[0]);
    REQUIRE(offer);
    CHECK(offer->aids == std::vector<uint32_t>{101});
    CHECK(offer->p2 == rules.listens()[0].p2_of_app[0]);

    // The Ack, then the connection it was for, once.
    Ack ack{tun::fresh_header(tun::wall_ms()), offer->h.nonce, offer->client, offer->server,
            offer->p2, 101};
    auto acked = seal(ack, kKey);
    h = hear(server, acked);
    CHECK(h.taken == acked.size());
    CHECK(h.reply.empty());
    CHECK(server.admit(ask.client, ask.server.addr, offer->p2, 1000) == Outcome::admitted);
    // The same SYN again (its flow ended early) is the same connection; another is not.
    CHECK(server.admit(ask.client, ask.server.addr, offer->p2, 1000) == Outcome::admitted);
    CHECK(server.admit(ask.client, ask.server.addr, offer->p2, 2000) == Outcome::not_negotiated);
    CHECK(server.outcomes()[static_cast<size_t>(Outcome::negotiated)] == 1);
    CHECK(server.entries().front().state == std::string("connected"));
  }
  SECTION("two messages in one read: two answers") {
    auto both = sealed;
    auto second = seal(ask_for("198.51.100.5:40001"), kKey);
    both.insert(both.end(), second.begin(), second.end());
    Heard h = hear(server, both);
    CHECK(h.taken == both.size());
    CHECK(replies(h.reply).size() == 2);
  }
  SECTION("a client of a plain app is refused in a message, the link kept") {
    auto other = seal(ask_for("203.0.113.5:40000"), kKey);
    Heard h = hear(server, other);
    CHECK(h.end == stack::Negotiator::End::keep);
    auto got = replies(h.reply);
    REQUIRE(got.size() == 1);
    REQUIRE(std::holds_alternative<Refuse>(got[0]));
    CHECK(std::get<Refuse>(got[0]).reason == Reason::not_cooperative);
  }
  SECTION("a plain client (HTTP on p1) is reset and counted") {
    std::string get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    Heard h = hear(server, std::vector<uint8_t>(get.begin(), get.end()));
    CHECK(h.end == stack::Negotiator::End::reset);
    CHECK(server.wire().plain_clients == 1);
  }
  SECTION("another key is reset and counted") {
    Heard h = hear(server, seal(ask, std::vector<uint8_t>(32, 8)));
    CHECK(h.end == stack::Negotiator::End::reset);
    CHECK(h.reply.empty());
    CHECK(server.wire().bad_mac == 1);
  }
  SECTION("a message replayed is reset and counted") {
    CHECK(hear(server, sealed).end == stack::Negotiator::End::keep);
    CHECK(hear(server, sealed).end == stack::Negotiator::End::reset);
    CHECK(server.wire().replayed == 1);
  }
  SECTION("an Offer from the client side is out of turn") {
    Offer o{tun::fresh_header(tun::wall_ms()), ask.h.nonce, ask.client, ask.server,
            vpm::Proto::tcp, 22000, {101}};
    CHECK(hear(server, seal(o, kKey)).end == stack::Negotiator::End::reset);
  }
}

TEST_CASE("the engine: negotiation on p1 passes, a cooperative p2 admits only what was negotiated") {
  auto cfg = config(kServer);
  vpm::Engine engine(cfg);
  const auto& l = engine.rules().listens()[0];
  uint16_t p2 = l.p2_of_app[0];
  Outcome next = Outcome::not_negotiated;
  std::vector<std::string> asked;
  engine.admit_with([&](const vpm::Endpoint& client, const vpm::IpAddr&, uint16_t port, uint32_t) {
    asked.push_back(client.str() + ">" + std::to_string(port));
    return next;
  });
  auto in = [&](Spec s) {
    Bytes b = build(s);
    vpm::Result r = engine.to_stack(b, 1000);
    return std::make_pair(r, get16(b, 22));  // and the destination port after
  };

  // A cooperative app's client, and one no app takes, negotiate on p1 itself.
  for (const char* who : {"198.51.100.5", "192.0.2.99"}) {
    INFO(who);
    auto [r, port] = in({who, "192.0.2.10", 6, 40000, 6379, 0x02});
    CHECK(r.verdict == Verdict::passed);
    CHECK(port == 6379);
  }
  // A plain app's client is translated as always.
  auto [plain, plain_port] = in({"203.0.113.5", "192.0.2.10", 6, 40000, 6379, 0x02});
  CHECK(plain.verdict == Verdict::translated);
  CHECK(plain_port == l.p2_of_app[1]);
  // The stack answers from p1 on a negotiation connection: untranslated.
  Bytes reply = build({"192.0.2.10", "198.51.100.5", 6, 6379, 40000, 0x12});
  CHECK(engine.to_tun(reply, 1000).verdict == Verdict::passed);
  CHECK(get16(reply, 20) == 6379);

  SECTION("not negotiated: refused; pending: dropped (the SYN comes again); a mid-stream packet: dropped") {
    CHECK(in({"198.51.100.5", "192.0.2.10", 6, 40001, p2, 0x02}).first.reason ==
          Drop::coop_not_negotiated);
    next = Outcome::pending;
    CHECK(in({"198.51.100.5", "192.0.2.10", 6, 40001, p2, 0x02}).first.reason == Drop::coop_pending);
    next = Outcome::window_passed;
    CHECK(in({"198.51.100.5", "192.0.2.10", 6, 40001, p2, 0x02}).first.verdict == Verdict::refused);
    CHECK(in({"198.51.100.5", "192.0.2.10", 6, 40002, p2, 0x10}).first.reason == Drop::no_flow);
    CHECK(asked.size() == 3);  // never asked about a packet that is not a SYN
  }
  SECTION("admitted: the connection passes both ways on p2, asked once") {
    next = Outcome::admitted;
    auto [syn, syn_port] = in({"198.51.100.5", "192.0.2.10", 6, 40001, p2, 0x02});
    CHECK(syn.verdict == Verdict::passed);
    CHECK(syn.app == 0);
    CHECK(syn_port == p2);
    next = Outcome::not_negotiated;
    CHECK(in({"198.51.100.5", "192.0.2.10", 6, 40001, p2, 0x10}).first.verdict == Verdict::passed);
    Bytes back = build({"192.0.2.10", "198.51.100.5", 6, p2, 40001, 0x12});
    CHECK(engine.to_tun(back, 1000).verdict == Verdict::passed);
    CHECK(get16(back, 20) == p2);
    CHECK(asked == std::vector<std::string>{"198.51.100.5:40001>" + std::to_string(p2)});
  }
}
