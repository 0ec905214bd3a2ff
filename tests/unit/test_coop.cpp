// Cooperative negotiation state machines, as tables: every message in every
// state of an offer (none, pending, negotiated, used, expired).
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/coop.hpp"

using namespace testpkt;
using namespace vpm::coop;

namespace {

const char* kConfig = R"(
[cooperative]
key_file = "/k"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "echo"
cooperative = true
[[app]]
name = "green"
aid = 102
listen = ["192.0.2.10:9000"]
clients = ["203.0.113.0/24"]
serve = "echo"
)";
constexpr uint64_t kT0 = 1'800'000'000'000;

Header fresh(uint64_t now_ms) {
  static uint8_t counter = 0;
  Header h;
  h.nonce.fill(++counter);
  h.expiry_ms = now_ms + 10000;
  return h;
}
vpm::Endpoint ep(const char* text) { return *vpm::Endpoint::parse(text, nullptr); }

// One step of a scene and what it must come to.
enum class Do {
  ask,             // the client's VPM asks for `client`
  ack,             // acknowledges the last offer as it was
  ack_other_aid,   // with an AID that was not offered
  ack_other_port,  // for another client port than offered
  ack_again,       // the same Ack once more (a replay past the nonce cache)
  decline,         // refuses the last offer
  connect,         // `client` connects to vaddr:p2 of the last offer (a new SYN)
  resend,          // the same SYN again (same ISN): the same connection
  wait,            // time passes: `ms`
};
struct Step {
  Do action;
  Outcome expect;
  const char* client = "198.51.100.7:40000";
  uint64_t ms = 0;
};

}  // namespace

TEST_CASE("the server side of a negotiation, message by message") {
  struct Case {
    const char* what;
    std::vector<Step> steps;
  } cases[] = {
      {"a negotiation, then the connection it was for",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted}}},
      {"the negotiated translation is used once",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted},
        {Do::connect, Outcome::not_negotiated}}},
      {"a SYN sent again is the connection that used the translation",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted},
        {Do::resend, Outcome::admitted},
        {Do::connect, Outcome::not_negotiated}}},
      {"the client's port negotiated again: its SYN may overtake the new Ack",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted},
        {Do::ask, Outcome::offered},
        {Do::connect, Outcome::pending},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted}}},
      {"a p2 nobody negotiated", {{Do::connect, Outcome::not_negotiated}}},
      {"offered, not yet acknowledged: the SYN waits for the Ack",
       {{Do::ask, Outcome::offered},
        {Do::connect, Outcome::pending},
        {Do::connect, Outcome::not_negotiated, "198.51.100.7:40001"},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::admitted}}},
      {"offered, never acknowledged: no connection once the offer expired",
       {{Do::ask, Outcome::offered},
        {Do::wait, Outcome::offered, "", kOfferMs + 1},
        {Do::connect, Outcome::not_negotiated}}},
      {"another client port than negotiated",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::connect, Outcome::not_negotiated, "198.51.100.7:40001"}}},
      {"an Ack for no offer", {{Do::ack, Outcome::unknown_offer}}},
      {"an Ack replayed",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::ack_again, Outcome::unknown_offer}}},
      {"an Ack with an AID that was not offered (a forged AID)",
       {{Do::ask, Outcome::offered},
        {Do::ack_other_aid, Outcome::aid_mismatch},
        {Do::ack, Outcome::unknown_offer},
        {Do::connect, Outcome::not_negotiated}}},
      {"an Ack for another client port than offered",
       {{Do::ask, Outcome::offered},
        {Do::ack_other_port, Outcome::mismatch},
        {Do::connect, Outcome::not_negotiated}}},
      {"an offer declined by the client's VPM",
       {{Do::ask, Outcome::offered},
        {Do::decline, Outcome::offered},
        {Do::ack, Outcome::unknown_offer}}},
      {"an Ack after the offer expired",
       {{Do::ask, Outcome::offered},
        {Do::wait, Outcome::offered, "", kOfferMs + 1},
        {Do::ack, Outcome::unknown_offer}}},
      {"a connection after the window",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::wait, Outcome::offered, "", kWindowMs + 1},
        {Do::connect, Outcome::window_passed}}},
      {"a connection long after the window",
       {{Do::ask, Outcome::offered},
        {Do::ack, Outcome::negotiated},
        {Do::wait, Outcome::offered, "", 3 * kWindowMs},
        {Do::ask, Outcome::offered, "198.51.100.8:1"},
        {Do::connect, Outcome::not_negotiated}}},
      {"a client of a non-cooperative app", {{Do::ask, Outcome::not_cooperative, "203.0.113.5:1"}}},
      {"a client no app takes", {{Do::ask, Outcome::no_app, "192.0.2.99:1"}}},
  };
  auto cfg = config(kConfig);
  vpm::Ruleset rules(cfg);
  for (const auto& k : cases) {
    INFO(k.what);
    Negotiations server(rules, fresh);
    uint64_t now = kT0;
    Ask ask;
    Offer offer;
    Ack last_ack;
    size_t i = 0;
    for (const Step& s : k.steps) {
      INFO("step " << ++i);
      auto ack_of = [&](uint32_t aid, uint16_t cport) {
        vpm::Endpoint client = offer.client;
        client.port = cport;
        return Ack{fresh(now), offer.h.nonce, client, offer.server, offer.p2, aid};
      };
      Outcome got = Outcome::offered;
      switch (s.action) {
        case Do::ask: {
          ask = Ask{fresh(now), ep(s.client), ep("192.0.2.10:9000"), vpm::Proto::tcp};
          Reply r = server.on_ask(ask, now);
          got = r.outcome;
          if (r.send && std::holds_alternative<Offer>(*r.send)) offer = std::get<Offer>(*r.send);
          if (got == Outcome::offered) {
            CHECK(offer.aids == std::vector<uint32_t>{101});
            CHECK(offer.p2 == rules.listens()[0].p2_of_app[0]);
          }
          break;
        }
        case Do::ack:
          got = server.on_ack(last_ack = ack_of(101, offer.client.port), now).outcome;
          break;
        case Do::ack_again:
          got = server.on_ack(last_ack, now).outcome;
          break;
        case Do::ack_other_aid:
          got = server.on_ack(ack_of(102, offer.client.port), now).outcome;
          break;
        case Do::ack_other_port:
          got =
              server.on_ack(ack_of(101, static_cast<uint16_t>(offer.client.port + 1)), now).outcome;
          break;
        case Do::decline:
          server.on_refuse(Refuse{fresh(now), offer.h.nonce, Reason::aid_mismatch});
          break;
        case Do::connect:
          got = server.admit(ep(s.client), offer.server.addr, offer.p2, vpm::Proto::tcp, now,
                             static_cast<uint32_t>(1000 + i));
          break;
        case Do::resend:
          got = server.admit(ep(s.client), offer.server.addr, offer.p2, vpm::Proto::tcp, now,
                             static_cast<uint32_t>(1000 + i - 1));
          break;
        case Do::wait:
          now += s.ms;
          break;
      }
      CHECK(outcome_name(got) == std::string(outcome_name(s.expect)));
    }
  }
}

TEST_CASE("the client side answers an offer with an Ack only for its own AID and Ask") {
  Ask ours{fresh(kT0), ep("198.51.100.7:40000"), ep("192.0.2.10:9000"), vpm::Proto::tcp};
  Offer offer{fresh(kT0), ours.h.nonce, ours.client, ours.server, vpm::Proto::tcp, 22000, {101}};
  auto with = [&](auto change) {
    Offer o = offer;
    change(o);
    return o;
  };
  struct Case {
    const char* what;
    Message theirs;
    uint32_t aid;
    Outcome expect;
    bool sends_ack;
  } cases[] = {
      {"our AID offered", offer, 101, Outcome::negotiated, true},
      {"our AID not offered", offer, 102, Outcome::aid_mismatch, false},
      {"an offer for another Ask", with([](Offer& o) { o.in_reply_to.fill(0); }), 101,
       Outcome::mismatch, false},
      {"an offer for another client", with([](Offer& o) { o.client.port = 1; }), 101,
       Outcome::mismatch, false},
      {"an offer without a p2", with([](Offer& o) { o.p2 = 0; }), 101, Outcome::mismatch, false},
      {"a refusal: no app", Refuse{fresh(kT0), ours.h.nonce, Reason::no_app}, 101, Outcome::no_app,
       false},
      {"a refusal: busy", Refuse{fresh(kT0), ours.h.nonce, Reason::busy}, 101, Outcome::busy,
       false},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    Reply r = answer(ours, k.theirs, k.aid, fresh(kT0));
    CHECK(outcome_name(r.outcome) == std::string(outcome_name(k.expect)));
    bool ack = r.send && std::holds_alternative<Ack>(*r.send);
    CHECK(ack == k.sends_ack);
    if (ack) {
      const Ack& a = std::get<Ack>(*r.send);
      CHECK(a.in_reply_to == offer.h.nonce);
      CHECK(a.aid == k.aid);
      CHECK(a.p2 == 22000);
    }
  }
}
