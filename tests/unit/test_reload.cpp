// Reloading the rules of a running daemon: the merge, the engine, the daemon.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "packets.hpp"
#include "tun/capture.hpp"
#include "tun/config_file.hpp"
#include "tun/daemon.hpp"
#include "vpm/engine.hpp"
#include "vpm/reload.hpp"

using namespace testpkt;

namespace {

const char* kBefore = R"([timeouts]
tcp_closed = "100ms"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "http-info"
[[app]]
name = "green"
aid = 102
listen = ["192.0.2.10:9000"]
clients = ["203.0.113.0/24"]
serve = "echo"
)";

// green is gone and its clients go to teal; blue is as it was, listed second.
const char* kAfter = R"([timeouts]
tcp_closed = "100ms"
[[app]]
name = "teal"
aid = 103
listen = ["192.0.2.10:9000"]
clients = ["203.0.113.0/24"]
serve = "http-info"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "http-info"
)";

uint16_t p2_of(const vpm::Ruleset& rules, const std::string& app) {
  const auto& apps = rules.config().apps;
  for (size_t a = 0; a < apps.size(); ++a)
    if (apps[a].name == app) return rules.listens().at(0).p2_of_app[a];
  return 0;
}

Bytes tcp(const std::string& client, uint16_t port, uint8_t flags, uint32_t seq = 0,
          uint32_t ack = 0, Bytes payload = {}) {
  Spec s{client, "192.0.2.10", 6, port, 9000, flags, std::move(payload)};
  s.seq = seq;
  s.ack = ack;
  return build(s);
}

std::string payloads(const std::vector<Bytes>& packets) {
  std::string out;
  for (auto& p : packets) {
    Bytes data = payload_of(p);
    out.append(data.begin(), data.end());
  }
  return out;
}

}  // namespace

TEST_CASE("a reload keeps flows and p2s, drains a removed app, and drops it once idle") {
  vpm::Engine e(config(kBefore));
  uint16_t blue = p2_of(e.rules(), "blue"), green = p2_of(e.rules(), "green");
  Bytes syn = tcp("203.0.113.5", 40000, 0x02);
  REQUIRE(e.to_stack(syn, 0).verdict == vpm::Verdict::translated);

  auto next = config(kAfter);
  CHECK(vpm::reload_errors(e.rules().config(), next).empty());
  auto r = vpm::merge_reload(e.rules().config(), next, e.flows_per_app());
  REQUIRE(r.config.apps.size() == 3);  // teal, blue, and green draining its flow
  CHECK(r.config.apps[2].name == "green");
  CHECK(r.config.apps[2].draining);
  CHECK(r.config.apps[2].clients.empty());
  CHECK(r.app_of == std::vector<uint16_t>{1, 2});
  CHECK(r.summary == "added teal; removed green (draining 1 flow)");
  e.reload(r.config, r.app_of);
  CHECK(p2_of(e.rules(), "blue") == blue);
  CHECK(p2_of(e.rules(), "green") == green);
  uint16_t teal = p2_of(e.rules(), "teal");
  CHECK(teal != green);
  CHECK(teal != blue);

  // The open flow keeps green and its p2; a new client of the prefix gets teal.
  Bytes ack = tcp("203.0.113.5", 40000, 0x10);
  vpm::Result kept = e.to_stack(ack, 1);
  CHECK(kept.app == 2);
  CHECK(get16(ack, 22) == green);
  Bytes other = tcp("203.0.113.6", 40001, 0x02);
  vpm::Result fresh = e.to_stack(other, 1);
  CHECK(fresh.app == 0);
  CHECK(get16(other, 22) == teal);
  // The same client reusing its port for a new connection is a new flow: teal.
  Bytes again = tcp("203.0.113.5", 40000, 0x04);
  e.to_stack(again, 1);  // a RST: the old connection is over
  again = tcp("203.0.113.5", 40000, 0x02, 777);
  CHECK(e.to_stack(again, 2).app == 0);
  CHECK(get16(again, 22) == teal);
  // Replies on green's p2 still map back to p1.
  Spec reply{"192.0.2.10", "203.0.113.5", 6, green, 40000, 0x12};
  Bytes back = build(reply);
  CHECK(e.to_tun(back, 2).verdict == vpm::Verdict::translated);
  CHECK(get16(back, 20) == 9000);

  // green has no flow left: merging again leaves it out, and nobody moves.
  r = vpm::merge_reload(e.rules().config(), next, e.flows_per_app());
  CHECK(r.summary == "the old green has drained");
  REQUIRE(r.config.apps.size() == 2);
  e.reload(r.config, r.app_of);
  CHECK(p2_of(e.rules(), "teal") == teal);
  CHECK(p2_of(e.rules(), "blue") == blue);
  CHECK(vpm::merge_reload(e.rules().config(), next, e.flows_per_app()).summary ==
        "nothing changed");
  // No two keys wanted one port here, so a fresh start with the file agrees.
  vpm::Ruleset started(next);
  CHECK(p2_of(started, "teal") == teal);
  CHECK(p2_of(started, "blue") == blue);
}

// Where two keys hash to one port, a fresh start gives it to the first in
// canonical order; a reload leaves it with the app that had it.
TEST_CASE("a reload does not move a running app's p2 for an app that wants the same port") {
  auto app = [](uint32_t aid) {
    return "[[app]]\nname = \"a" + std::to_string(aid) + "\"\naid = " + std::to_string(aid) +
           "\nlisten = [\"192.0.2.10:9000\"]\nclients = [\"192.0.2." + std::to_string(aid % 200) +
           "\"]\nserve = \"echo\"\n";
  };
  const std::string range = "[vpm]\nport_range = \"20000-20001\"\n";
  auto alone = [&](uint32_t aid) {
    return p2_of(vpm::Ruleset(config(range + app(aid))), "a" + std::to_string(aid));
  };
  uint32_t early = 1;  // sorts before 1000 and wants the port 1000 wants
  while (alone(early) != alone(1000)) ++early;
  vpm::Ruleset running(config(range + app(1000)));
  auto next = config(range + app(1000) + app(early));
  vpm::Ruleset fresh(next), reloaded(next, &running);
  CHECK(p2_of(fresh, "a" + std::to_string(early)) ==
        alone(1000));                              // a fresh start: the early one has it
  CHECK(p2_of(reloaded, "a1000") == alone(1000));  // a reload: it stays
  CHECK(p2_of(reloaded, "a" + std::to_string(early)) != alone(1000));
}

TEST_CASE("a reload refuses what needs a restart, naming the line and key") {
  auto running = config(kBefore);
  auto next =
      config(std::string("[tun]\nmtu = 9000\n[vpm]\nport_range = \"30000-30999\"\n") + kBefore);
  auto errors = vpm::reload_errors(running, next);
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].str() ==
        "test.toml:2: tun.mtu: cannot change while vpmtun runs (65520 -> 9000); restart vpmtun "
        "to apply it");
  CHECK(errors[1].key == "vpm.port_range");
  CHECK(errors[1].line == 4);

  // Per-connection slices follow the listened ports: those are fixed too.
  auto per_connection = [](const std::string& more) {
    return config("[vpm]\nallocation = \"per-connection\"\n" + std::string(kBefore) + more);
  };
  errors = vpm::reload_errors(per_connection(""), per_connection(R"([[app]]
name = "red"
aid = 104
listen = ["192.0.2.10:9001"]
clients = ["192.0.2.0/24"]
serve = "echo"
)"));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == "app[2].listen");
  CHECK(errors[0].line == 17);
  CHECK(vpm::reload_errors(per_connection(""), per_connection("")).empty());

  // The first app served by programs needs the library socket, made at start.
  errors = vpm::reload_errors(running, config(std::string(kBefore) + R"([[app]]
name = "prog"
aid = 105
listen = ["192.0.2.10:9002"]
clients = ["192.0.2.0/24"]
serve = "exec"
)"));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == "vpm.app_socket");
}

// The daemon re-reads its file: an open echo connection of the removed app
// goes on, a new client of its prefix reaches the app that took it over,
// and the removed app is gone within a second of its last flow.
TEST_CASE("a daemon reloads its file under way") {
  char path[] = "/tmp/vpmtun-reload-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  write(kBefore);
  auto parsed = tun::read_config(path);  // as vpmtun run reads it ([tun] queues = "auto")
  tun::FakeDevice device;
  tun::Daemon daemon(std::get<vpm::Config>(parsed), device, {});
  auto exchange = [&](Bytes packet, uint64_t now) {
    device.written.clear();
    device.inbound.push_back(std::move(packet));
    daemon.drain_device(now);
    return device.written;
  };

  auto synack = exchange(tcp("203.0.113.5", 41000, 0x02, 5000), 0);
  REQUIRE(synack.size() == 1);
  uint32_t green_seq = get32(synack[0], 24) + 1;
  exchange(tcp("203.0.113.5", 41000, 0x10, 5001, green_seq), 0);

  write(std::string(kAfter) + "[[app]]\nname = \"half\"\n");
  auto [bad_ok, bad] = daemon.answer("reload");
  CHECK_FALSE(bad_ok);
  CHECK(bad.find(std::string(path) + ":15: app[2].aid: every app needs an aid") == 0);
  CHECK(bad.ends_with("; nothing changed: the running rules stay\n"));
  CHECK(daemon.engine().rules().config().apps.size() == 2);

  write(kAfter);
  auto [ok, said] = daemon.answer("reload");
  CHECK(ok);
  CHECK(said ==
        "reloaded " + std::string(path) + ": added teal; removed green (draining 1 flow)\n");
  CHECK(daemon.answer("apps").second.find("green (aid 102, draining): echo") != std::string::npos);
  CHECK(daemon.counters().reloads == 1);
  CHECK(daemon.counters().reloads_refused == 1);

  // green still echoes on the connection it had.
  auto echoed = exchange(tcp("203.0.113.5", 41000, 0x18, 5001, green_seq, {'h', 'i'}), 10);
  CHECK(payloads(echoed) == "hi");
  // A new client of green's prefix: teal's http-info answers.
  synack = exchange(tcp("203.0.113.6", 41001, 0x02, 9000), 10);
  REQUIRE(synack.size() == 1);
  uint32_t teal_seq = get32(synack[0], 24) + 1;
  exchange(tcp("203.0.113.6", 41001, 0x10, 9001, teal_seq), 10);
  std::string get = "GET / HTTP/1.1\r\n\r\n";
  auto answer =
      exchange(tcp("203.0.113.6", 41001, 0x18, 9001, teal_seq, Bytes(get.begin(), get.end())), 10);
  CHECK(payloads(answer).find("\"app\":\"teal\"") != std::string::npos);

  // The green client resets its connection: green is gone a second later.
  exchange(tcp("203.0.113.5", 41000, 0x04, 5003), 20);
  daemon.tick(2000);
  const auto& apps = daemon.engine().rules().config().apps;
  REQUIRE(apps.size() == 2);
  CHECK(apps[0].name == "teal");
  CHECK(apps[1].name == "blue");
  CHECK(daemon.answer("apps").second.find("green") == std::string::npos);
  ::unlink(path);
}

// Captures do not change how many workers serve: a reload with one under
// way takes the file as it is.
TEST_CASE("a reload while capturing: nothing changed") {
  char path[] = "/tmp/vpmtun-reload-XXXXXX";
  char capture[] = "/tmp/vpmtun-capture-XXXXXX";
  for (char* name : {path, capture}) {
    int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
  }
  std::ofstream(path, std::ios::trunc) << kBefore;
  auto cfg = std::get<vpm::Config>(tun::read_config(path));
  REQUIRE(cfg.tun.queues_auto);
  tun::FakeDevice device;
  tun::DaemonOptions opt;
  opt.capture_tun = capture;
  {
    tun::Daemon daemon(cfg, device, opt);
    auto [ok, said] = daemon.answer("reload");
    CHECK(ok);
    CHECK(said == "reloaded " + std::string(path) + ": nothing changed\n");
  }
  ::unlink(path);
  ::unlink(capture);
}

// Workers append to one capture file: each write() is whole records.
TEST_CASE("captures: raw IP in pcap, two writers append whole records to one file") {
  char path[] = "/tmp/vpmtun-capture-XXXXXX";
  ::close(::mkstemp(path));
  int first = tun::Capture::create(path);
  int second = ::open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  REQUIRE(second >= 0);
  std::map<std::vector<uint8_t>, int> written;
  {
    tun::Capture a(first), b(second);
    for (int i = 0; i < 3000; ++i) {
      // Sizes that cross the buffer's bound at different points in each.
      std::vector<uint8_t> p(static_cast<size_t>(40 + (i * 37) % 1460), static_cast<uint8_t>(i));
      p[0] = i % 2 ? 0x45 : 0x60;
      p[1] = static_cast<uint8_t>(i >> 8);
      (i % 2 ? a : b).write(p);
      ++written[p];
      if (i % 500 == 0) a.flush();
    }
  }
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), {});
  REQUIRE(file.size() >= 24);
  auto word = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, file.data() + at, 4);
    return v;
  };
  CHECK(word(0) == 0xa1b2c3d4);
  CHECK(word(20) == 101);  // LINKTYPE_RAW
  size_t records = 0;
  for (size_t at = 24; at < file.size(); ++records) {
    REQUIRE(at + 16 <= file.size());
    uint32_t caplen = word(at + 8);
    CHECK(word(at + 12) == caplen);
    REQUIRE(at + 16 + caplen <= file.size());
    std::vector<uint8_t> p(file.begin() + static_cast<long>(at + 16),
                           file.begin() + static_cast<long>(at + 16 + caplen));
    REQUIRE(written[p]-- > 0);
    at += 16 + caplen;
  }
  CHECK(records == 3000);
  ::unlink(path);
}

// Per-connection: the ports flows hold stay theirs across a reload, and the
// pool goes on from where it was.
TEST_CASE("a reload under per-connection allocation keeps the ports flows hold") {
  std::string head = "[vpm]\nallocation = \"per-connection\"\n";
  vpm::Engine e(config(head + kBefore));
  Bytes first = tcp("203.0.113.5", 40000, 0x02);
  REQUIRE(e.to_stack(first, 0).app == 1);  // green
  uint16_t held = get16(first, 22);
  auto next = config(head + kAfter);
  REQUIRE(vpm::reload_errors(e.rules().config(), next).empty());
  auto r = vpm::merge_reload(e.rules().config(), next, e.flows_per_app());
  e.reload(r.config, r.app_of);
  Bytes ack = tcp("203.0.113.5", 40000, 0x10);
  CHECK(e.to_stack(ack, 1).app == 2);  // green, draining
  CHECK(get16(ack, 22) == held);
  Bytes second = tcp("203.0.113.6", 40001, 0x02);
  CHECK(e.to_stack(second, 1).app == 0);  // teal
  CHECK(get16(second, 22) == held + 1);   // the next free port, not green's again
  CHECK(e.pools().at(0).in_use() == 2);
}

TEST_CASE("an app is the same app whatever the order of its listens") {
  auto two = [](const char* listens) {
    return config(std::string("[[app]]\nname = \"a\"\naid = 1\nlisten = [") + listens +
                  "]\nclients = [\"198.51.100.0/24\"]\nserve = \"echo\"\n");
  };
  auto r = vpm::merge_reload(two("\"192.0.2.10:80\", \"192.0.2.10:81/udp\""),
                             two("\"192.0.2.10:81/udp\", \"192.0.2.10:80\""), {1});
  CHECK(r.summary == "nothing changed");
  CHECK(r.app_of == std::vector<uint16_t>{0});
  r = vpm::merge_reload(two("\"192.0.2.10:80\""), two("\"192.0.2.10:81\""), {1});
  CHECK(r.summary == "changed a (draining 1 flow)");
  CHECK(r.app_of == std::vector<uint16_t>{1});
}

// A reload may bring a new virtual address, and take one away.
TEST_CASE("a reload adds and removes virtual addresses in the stack") {
  tun::FakeDevice device;
  tun::Daemon daemon(config(kBefore), device, {});
  const std::string extra = R"([[app]]
name = "other"
aid = 104
listen = ["192.0.2.11:9000", "[2001:db8::11]:9000"]
clients = ["198.51.100.0/24", "2001:db8:1::/48"]
serve = "echo"
)";
  auto syn_to = [&](const std::string& client, const std::string& vip) {
    Spec s{client, vip, 6, 42000, 9000, 0x02};
    device.written.clear();
    device.inbound.push_back(build(s));
    daemon.drain_device(0);
    return device.written.size() == 1 &&
           (device.written[0][(vip.find(':') != std::string::npos ? 40 : 20) + 13] == 0x12);
  };
  CHECK_FALSE(syn_to("198.51.100.5", "192.0.2.11"));
  REQUIRE(daemon.reload(config(std::string(kBefore) + extra)).first);
  CHECK(syn_to("198.51.100.5", "192.0.2.11"));  // a SYN-ACK from the new address
  CHECK(syn_to("2001:db8:1::5", "2001:db8::11"));
  REQUIRE(daemon.reload(config(kBefore)).first);  // both handshakes are still open: other drains
  CHECK(daemon.engine().rules().config().apps.size() == 3);
  using Ends = std::pair<const char*, const char*>;
  for (auto [client, vip] :
       {Ends{"198.51.100.5", "192.0.2.11"}, Ends{"2001:db8:1::5", "2001:db8::11"}}) {
    Spec rst{client, vip, 6, 42000, 9000, 0x04};  // the clients give up
    rst.seq = 0x12000001;
    device.inbound.push_back(build(rst));
  }
  daemon.drain_device(10);
  daemon.tick(2000);
  CHECK(daemon.engine().rules().config().apps.size() == 2);
  CHECK_FALSE(syn_to("198.51.100.5", "192.0.2.11"));  // nothing answers there any more
}

// lwIP keeps a connection the server closed first in TIME_WAIT for 2 MSL;
// an app removed and added back meanwhile must still get its p2 bound.
TEST_CASE("an app added back binds its p2 while its old connections are in TIME_WAIT") {
  tun::FakeDevice device;
  tun::Daemon daemon(config(kBefore), device, {});
  auto exchange = [&](Bytes packet) {
    device.written.clear();
    device.inbound.push_back(std::move(packet));
    daemon.drain_device(0);
    return device.written;
  };
  const std::string client = "198.51.100.5";  // blue's http-info answers and closes first
  auto synack = exchange(tcp(client, 43000, 0x02, 100));
  REQUIRE(synack.size() == 1);
  uint32_t seq = get32(synack[0], 24) + 1;
  exchange(tcp(client, 43000, 0x10, 101, seq));
  std::string get = "GET / HTTP/1.1\r\n\r\n";
  auto answer = exchange(tcp(client, 43000, 0x18, 101, seq, Bytes(get.begin(), get.end())));
  REQUIRE(payloads(answer).find("\"app\":\"blue\"") != std::string::npos);
  uint32_t after = 101 + static_cast<uint32_t>(get.size());
  exchange(
      tcp(client, 43000, 0x11, after, seq + static_cast<uint32_t>(payloads(answer).size()) + 1));

  std::string green_only = kBefore;
  green_only.erase(
      green_only.find("[[app]]\nname = \"blue\""),
      green_only.find("[[app]]\nname = \"green\"") - green_only.find("[[app]]\nname = \"blue\""));
  auto [removed, said] = daemon.reload(config(green_only));
  REQUIRE(removed);
  CHECK(said == "removed blue\n");
  auto [back, said_back] = daemon.reload(config(kBefore));
  CHECK(back);
  CHECK(said_back == "added blue\n");
  synack = exchange(tcp(client, 43001, 0x02, 500));
  REQUIRE(synack.size() == 1);
  CHECK(synack[0][33] == 0x12);
}
