// What workers split and what their supervisor joins: the engine's share
// of ports and flows, the figures summed over workers, their tables joined.
#include <catch2/catch.hpp>
#include <set>

#include "packets.hpp"
#include "tun/daemon.hpp"
#include "tun/device.hpp"
#include "tun/report.hpp"
#include "vpm/engine.hpp"

using namespace testpkt;

namespace {

const char* kPerConnection = R"(
[vpm]
control_socket = ""
allocation = "per-connection"
port_range = "20000-20099"
max_flows = 1000
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "echo"
)";

}  // namespace

TEST_CASE("workers take disjoint halves of a per-connection slice, and half the flow table") {
  auto cfg = config(kPerConnection);
  std::set<uint16_t> seen[2];
  for (uint32_t w = 0; w < 2; ++w) {
    vpm::Engine engine(cfg, vpm::Share{w, 2});
    CHECK(engine.flows().max_flows() == 500);
    for (int i = 0; i < 60; ++i) {
      Spec syn{"198.51.100.7", "192.0.2.10", 6, static_cast<uint16_t>(30000 + i), 9000};
      Bytes p = build(syn);
      auto r = engine.to_stack(p, 1);
      if (r.verdict != vpm::Verdict::translated) break;  // this worker's ports are all taken
      seen[w].insert(get16(p, 22));
    }
  }
  CHECK(seen[0].size() == 50);
  CHECK(seen[1].size() == 50);
  CHECK(*seen[0].begin() == 20000);
  CHECK(*seen[0].rbegin() == 20049);
  CHECK(*seen[1].begin() == 20050);
  CHECK(*seen[1].rbegin() == 20099);
}

TEST_CASE("figures travel as text, add up over workers, and refuse another configuration") {
  auto cfg = config(kPerConnection);
  tun::FakeDevice device;
  tun::Daemon daemon(cfg, device, {});
  Spec syn{"198.51.100.7", "192.0.2.10", 6, 30000, 9000};
  device.inbound.push_back(build(syn));
  daemon.drain_device(1);
  tun::Figures f = tun::figures_of(daemon);
  auto again = tun::decode(tun::encode(f));
  REQUIRE(again);
  CHECK(tun::encode(*again) == tun::encode(f));

  tun::Figures sum = f;
  REQUIRE(tun::add(sum, *again));
  auto counter = [](const tun::Figures& x, const std::string& group, const std::string& name) {
    for (auto& c : x.counters)
      if (c.group == group && c.name == name) return c.value;
    return uint64_t{999};
  };
  CHECK(counter(f, "tun", "packets_in") == 1);
  CHECK(counter(sum, "tun", "packets_in") == 2);
  CHECK(sum.apps[0].flows == 2 * f.apps[0].flows);
  CHECK(sum.ports_in_use[0] == 2);
  CHECK(sum.uptime_s == f.uptime_s);
  CHECK(tun::render_stats(sum, false).find("packets_in                 2\n") != std::string::npos);

  tun::Figures other = f;
  other.apps.emplace_back();
  CHECK_FALSE(tun::add(sum, other));
  CHECK_FALSE(tun::decode("x 1 2\n"));
  CHECK_FALSE(tun::decode("a 1 2 3\n"));
  CHECK_FALSE(tun::decode("c tun packets_in\n"));
}

TEST_CASE("instances travel with the figures, their command whole, and add up by id") {
  tun::Figures f;
  tun::InstanceInfo i;
  i.id = 7;
  i.app = "blue";
  i.pid = 4242;
  i.uid = 1000;
  i.proto = vpm::Proto::udp;
  std::string why;
  i.bound = *vpm::Endpoint::parse("[::]:9000", &why);
  i.real = *vpm::Endpoint::parse("[::1]:41234", &why);
  i.relayed = 5;
  i.open = 2;
  i.refusals = 1;
  i.command = "nginx: worker  process  -g x";
  f.instances = {i};
  auto again = tun::decode(tun::encode(f));
  REQUIRE(again);
  REQUIRE(again->instances.size() == 1);
  const auto& j = again->instances[0];
  CHECK(j.id == 7);
  CHECK(j.app == "blue");
  CHECK(j.pid == 4242);
  CHECK(j.uid == 1000);
  CHECK(j.proto == vpm::Proto::udp);
  CHECK(j.bound == i.bound);
  CHECK(j.real == i.real);
  CHECK(j.command == i.command);
  CHECK(tun::encode(*again) == tun::encode(f));
  // A worker's counts join the same instance; another id is listed beside it.
  tun::Figures more = f;
  more.instances[0].relayed = 10;
  more.instances.push_back(i);
  more.instances[1].id = 8;
  REQUIRE(tun::add(f, more));
  REQUIRE(f.instances.size() == 2);
  CHECK(f.instances[0].relayed == 15);
  CHECK(f.instances[0].open == 4);
  CHECK(f.instances[1].id == 8);
  CHECK_FALSE(tun::decode("i 7 blue 1 2 tcp nowhere [::1]:1 0 0 0 x\n"));
}

TEST_CASE("the tables of workers join into one, as text and as JSON") {
  std::string header = "proto client ...\n";
  std::vector<std::string> text = {header + "tcp a\ntcp b\n2 flows\n", header + "0 flows\n",
                                   header + "udp c\n1 flow\n"};
  CHECK(tun::join_tables(text, false) == header + "tcp a\ntcp b\nudp c\n3 flows\n");
  std::vector<std::string> json = {"[{\"a\":1},{\"b\":2}]\n", "[]\n", "[{\"c\":3}]\n"};
  CHECK(tun::join_tables(json, true) == "[{\"a\":1},{\"b\":2},{\"c\":3}]\n");
  CHECK(tun::join_tables({"[]\n", "[]\n"}, true) == "[]\n");
}

TEST_CASE("[tun] queues: too many are errors naming the key; every kind of app takes workers") {
  auto errors_of = [](const std::string& text) {
    std::string out;
    auto r = vpm::parse_config(text, "w.toml");
    if (auto* e = std::get_if<std::vector<vpm::ConfigError>>(&r))
      for (auto& x : *e) out += x.str() + "\n";
    return out;
  };
  std::string app =
      "[[app]]\nname = \"prog\"\naid = 1\nlisten = [\"192.0.2.10:9000\"]\n"
      "clients = [\"198.51.100.0/24\"]\n";
  CHECK(errors_of("[tun]\nqueues = 2\n" + app + "serve = \"echo\"\n").empty());
  CHECK(errors_of("[tun]\nqueues = 2\n" + app + "serve = \"exec\"\n").empty());
  CHECK(errors_of("[tun]\nqueues = 2\n[cooperative]\nkey_file = \"/k\"\n" + app +
                  "serve = \"exec\"\ncooperative = true\n")
            .empty());
  CHECK(errors_of("[tun]\nqueues = 17\n" + app + "serve = \"echo\"\n").find("tun.queues") !=
        std::string::npos);
  // Per-connection: every worker needs a port of each slice.
  CHECK(errors_of("[tun]\nqueues = 2\n[vpm]\nallocation = \"per-connection\"\n"
                  "port_range = \"20000-20000\"\n" +
                  app + "serve = \"echo\"\n")
            .find("needs at least 2 ports") != std::string::npos);
}

TEST_CASE("[tun] queues = \"auto\", the default: one worker per core") {
  auto parse = [](const std::string& text) {
    auto r = vpm::parse_config(text, "w.toml");
    REQUIRE(std::holds_alternative<vpm::Config>(r));
    return std::get<vpm::Config>(r);
  };
  std::string app =
      "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.10:9000\", \"192.0.2.10:9001\"]\n"
      "clients = [\"198.51.100.0/24\"]\n";
  vpm::Config plain = parse(app + "serve = \"echo\"\n");
  CHECK(plain.tun.queues_auto);
  CHECK(vpm::auto_queues(plain, 2) == 2);
  CHECK(vpm::auto_queues(plain, 64) == vpm::kMaxQueues);
  CHECK(vpm::auto_queues(plain, 0) == 1);
  CHECK(parse("[tun]\nqueues = \"auto\"\n" + app + "serve = \"echo\"\n").tun.queues_auto);
  vpm::Config fixed = parse("[tun]\nqueues = 3\n" + app + "serve = \"echo\"\n");
  CHECK_FALSE(fixed.tun.queues_auto);
  CHECK(fixed.tun.queues == 3);
  // Every kind of app: one per core.
  std::string coop =
      "[cooperative]\nkey_file = \"/k\"\n" + app + "serve = \"exec\"\ncooperative = true\n";
  CHECK(vpm::auto_queues(parse(coop), 8) == 8);
  CHECK(vpm::auto_queues(parse(app + "serve = \"exec\"\n"), 8) == 8);
  // Per-connection: no more workers than each slice has ports (two p1s share 5 ports).
  vpm::Config narrow =
      parse("[vpm]\nallocation = \"per-connection\"\nport_range = \"20000-20004\"\n" + app +
            "serve = \"echo\"\n");
  CHECK(vpm::auto_queues(narrow, 8) == 2);
  // Anything else is an error naming the key.
  auto r = vpm::parse_config("[tun]\nqueues = \"many\"\n" + app + "serve = \"echo\"\n", "w.toml");
  REQUIRE(std::holds_alternative<std::vector<vpm::ConfigError>>(r));
  CHECK(std::get<std::vector<vpm::ConfigError>>(r)[0].str().find(
            "w.toml:2: tun.queues: must be \"auto\"") != std::string::npos);
}
