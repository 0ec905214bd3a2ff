// Client rules, p2 assignment, the port pool and the flow table.
#include <catch2/catch.hpp>
#include <random>
#include <set>
#include <unordered_map>

#include "packets.hpp"
#include "vpm/flow_table.hpp"
#include "vpm/port_pool.hpp"
#include "vpm/rules.hpp"

using testpkt::addr;

namespace {

const char* kTwoApps = R"(
[vpm]
unmatched = "%s"
allocation = "%s"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000", "[2001:db8::10]:9000"]
clients = ["198.51.100.0/24", "2001:db8:1::/48"]
serve = "echo"
[[app]]
name = "green"
aid = 102
listen = ["192.0.2.10:9000", "[2001:db8::10]:9000"]
clients = ["198.51.100.128/25", "198.51.100.7:40000"]
serve = "echo"
[[app]]
name = "spare"
aid = 103
listen = ["192.0.2.10:9000"]
serve = "echo"
)";

vpm::Config two_apps(const char* unmatched = "reset", const char* allocation = "per-app") {
  char buf[1024];
  std::snprintf(buf, sizeof buf, kTwoApps, unmatched, allocation);
  return testpkt::config(buf);
}

}  // namespace

TEST_CASE("classification: exact pair beats prefix, longer prefix beats shorter") {
  vpm::Ruleset rules(two_apps());
  int v = rules.find_vaddr(addr("192.0.2.10"));
  REQUIRE(v >= 0);
  const vpm::Listen* l = rules.find_listen(v, 9000, vpm::Proto::tcp);
  REQUIRE(l);
  CHECK_FALSE(rules.find_listen(v, 9000, vpm::Proto::udp));
  CHECK_FALSE(rules.find_listen(v, 9001, vpm::Proto::tcp));
  CHECK(rules.find_vaddr(addr("192.0.2.11")) == -1);

  struct Case {
    const char* client;
    uint16_t port;
    uint16_t app;
  };
  std::vector<Case> cases = {
      {"198.51.100.5", 1234, 0},           // /24 -> blue
      {"198.51.100.200", 1234, 1},         // /25 beats /24 -> green
      {"198.51.100.7", 40000, 1},          // exact pair beats /24 -> green
      {"198.51.100.7", 40001, 0},          // other port of that host -> blue
      {"203.0.113.1", 1234, vpm::kNoApp},  // nobody -> refused
  };
  for (auto& c : cases) {
    INFO(c.client << ":" << c.port);
    CHECK(rules.classify(*l, addr(c.client), c.port) == c.app);
  }
  const vpm::Listen* l6 =
      rules.find_listen(rules.find_vaddr(addr("2001:db8::10")), 9000, vpm::Proto::tcp);
  REQUIRE(l6);
  CHECK(rules.classify(*l6, addr("2001:db8:1::5"), 1) == 0);
}

TEST_CASE("unmatched names a fallback app where that app listens") {
  vpm::Ruleset rules(two_apps("spare"));
  auto* l = rules.find_listen(rules.find_vaddr(addr("192.0.2.10")), 9000, vpm::Proto::tcp);
  CHECK(rules.classify(*l, addr("203.0.113.1"), 1) == 2);
  auto* l6 = rules.find_listen(rules.find_vaddr(addr("2001:db8::10")), 9000, vpm::Proto::tcp);
  CHECK(rules.classify(*l6, addr("2001:db8:9::1"), 1) == vpm::kNoApp);  // spare is not on v6
}

TEST_CASE("per-app p2s are deterministic, distinct, in range, and reversible") {
  vpm::Ruleset a(two_apps()), b(two_apps());
  auto& la = a.listens();
  auto& lb = b.listens();
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) CHECK(la[i].p2_of_app == lb[i].p2_of_app);
  int v = a.find_vaddr(addr("192.0.2.10"));
  auto* l = a.find_listen(v, 9000, vpm::Proto::tcp);
  std::set<uint16_t> p2s(l->p2_of_app.begin(), l->p2_of_app.end());
  CHECK(p2s.size() == 3);
  for (uint16_t p2 : p2s) {
    CHECK(a.hidden(p2));
    CHECK(a.p1_of(v, vpm::Proto::tcp, p2) == 9000);
    CHECK(a.p1_of(v, vpm::Proto::udp, p2) == 0);  // 9000/udp is not multiplexed
  }
  // An app's p2 does not depend on which other apps exist.
  auto one = testpkt::config(R"(
[[app]]
name = "green"
aid = 102
listen = ["192.0.2.10:9000"]
serve = "echo"
)");
  vpm::Ruleset solo(one);
  CHECK(solo.listens()[0].p2_of_app[0] == l->p2_of_app[1]);
}

TEST_CASE("per-connection slices split the range between the p1s of a vaddr") {
  auto cfg = testpkt::config(R"(
[vpm]
allocation = "per-connection"
port_range = "20000-20999"
[[app]]
name = "a"
aid = 1
listen = ["192.0.2.10:9000", "192.0.2.10:9001/udp", "192.0.2.11:9000"]
serve = "echo"
)");
  vpm::Ruleset r(cfg);
  int v = r.find_vaddr(addr("192.0.2.10"));
  auto* l1 = r.find_listen(v, 9000, vpm::Proto::tcp);
  auto* l2 = r.find_listen(v, 9001, vpm::Proto::udp);
  auto* l3 = r.find_listen(r.find_vaddr(addr("192.0.2.11")), 9000, vpm::Proto::tcp);
  CHECK(l1->slice_lo == 20000);
  CHECK(l1->slice_hi == 20499);
  CHECK(l2->slice_lo == 20500);
  CHECK(l2->slice_hi == 20999);
  CHECK(l3->slice_lo == 20000);
  CHECK(l3->slice_hi == 20999);
  CHECK(r.p1_of(v, vpm::Proto::tcp, 20499) == 9000);
  CHECK(r.p1_of(v, vpm::Proto::udp, 20500) == 9001);
  CHECK(r.p1_of(v, vpm::Proto::udp, 20000) == 0);
}

TEST_CASE("PortPool hands out the lowest free port") {
  vpm::PortPool pool(100, 229);  // 130 ports: more than two bitmap words
  for (uint16_t want = 100; want <= 229; ++want) CHECK(pool.acquire() == want);
  CHECK_FALSE(pool.acquire());
  CHECK(pool.in_use() == 130);
  pool.release(170);
  pool.release(105);
  pool.release(105);  // a double release is ignored
  pool.release(99);   // outside the pool: ignored
  CHECK(pool.acquire() == 105);
  CHECK(pool.acquire() == 170);
  CHECK_FALSE(pool.acquire());
}

TEST_CASE("FlowTable behaves like a map under random inserts and erases") {
  vpm::FlowTable table(5000);
  std::unordered_map<uint32_t, uint16_t> model;
  std::mt19937 rng(42);
  auto key_of = [](uint32_t n) {
    vpm::FlowKey k;
    uint8_t a[4] = {198, 51, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)};
    k.client = vpm::IpAddr::v4(a);
    k.vaddr = addr("192.0.2.10");
    k.client_port = static_cast<uint16_t>(n * 7);
    k.p1 = 9000;
    k.proto = 6;
    return k;
  };
  for (int step = 0; step < 200000; ++step) {
    uint32_t n = rng() % 8000;
    vpm::Flow* f = table.find(key_of(n));
    REQUIRE((f != nullptr) == (model.count(n) == 1));
    if (f) {
      REQUIRE(f->p2 == model[n]);
      if (rng() % 2) {
        table.erase(f);
        model.erase(n);
      }
    } else {
      vpm::Flow* g = table.insert(key_of(n));
      if (model.size() >= 5000) {
        REQUIRE(g == nullptr);  // max_flows reached
      } else {
        REQUIRE(g);
        g->p2 = static_cast<uint16_t>(n);
        model[n] = static_cast<uint16_t>(n);
      }
    }
    REQUIRE(table.size() == model.size());
  }
  // A sweep removes exactly what it is asked to, wherever backward shifts move flows.
  size_t erased = 0;
  table.sweep(
      SIZE_MAX, [](const vpm::Flow& f) { return f.p2 % 3 == 0; }, [&](vpm::Flow&) { ++erased; });
  size_t left = 0;
  table.for_each([&](const vpm::Flow& f, const vpm::FlowStats&) {
    CHECK(f.p2 % 3 != 0);
    ++left;
  });
  size_t multiples = 0;
  for (auto& [n, p2] : model) multiples += p2 % 3 == 0;
  CHECK(erased + left == model.size());
  CHECK(table.size() == left);
  CHECK(erased <= multiples);  // slots re-filled after the cursor passed are left for next time
  table.sweep(
      SIZE_MAX, [](const vpm::Flow& f) { return f.p2 % 3 == 0; }, [&](vpm::Flow&) { ++erased; });
  CHECK(erased == multiples);
}
