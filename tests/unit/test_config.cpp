// Configuration: values parse; every error names its line and key.
#include <catch2/catch.hpp>

#include "packets.hpp"
#include "vpm/config.hpp"
#include "vpm/rules.hpp"

namespace {

const char* kApp = R"(
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "echo"
)";

struct ErrorCase {
  const char* description;
  std::string toml;
  int line;
  const char* key;
  const char* message_part;
};

}  // namespace

TEST_CASE("durations") {
  CHECK(vpm::parse_duration("2h4m") == (2 * 3600 + 4 * 60) * 1000ull);
  CHECK(vpm::parse_duration("90s") == 90000ull);
  CHECK(vpm::parse_duration("500ms") == 500ull);
  CHECK(vpm::parse_duration("1h30m15s") == (3600 + 1800 + 15) * 1000ull);
  CHECK_FALSE(vpm::parse_duration("10"));
  CHECK_FALSE(vpm::parse_duration("m"));
  CHECK_FALSE(vpm::parse_duration("5 m"));
  CHECK_FALSE(vpm::parse_duration(""));
}

TEST_CASE("a full configuration parses to its values") {
  auto cfg = testpkt::config(R"(
[tun]
name = "vpm7"
mtu = 9000
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
configure = false
offload = false
[vpm]
port_range = "30000-30099"
allocation = "per-connection"
queue_timeout_ms = 250
unmatched = "blue"
max_flows = 1000
[timeouts]
tcp_established = "1h"
tcp_transitory = "2m"
tcp_closed = "5s"
tcp_handshake = "3s"
udp = "30s"
udp_unreplied = "10s"
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000", "[2001:db8::10]:9000/udp"]
clients = ["198.51.100.0/24", "198.51.100.7:40000", "[2001:db8::7]:5000", "2001:db8:1::/48", "203.0.113.9"]
forward = "127.0.0.1:19001"
proxy_protocol = "v2"
[metrics]
listen = "127.0.0.1:9464"
[daemon]
user = "vpmtun"
name = "node-a"
on_ready = "announce 10.99.0.0/24"
on_drain = "withdraw 10.99.0.0/24; sleep 2"
hook_timeout = "30s"
)");
  CHECK(cfg.tun.name == "vpm7");
  CHECK(cfg.tun.mtu == 9000);
  CHECK(cfg.tun.address->str() == "10.99.0.1/24");
  CHECK_FALSE(cfg.tun.configure);
  CHECK_FALSE(cfg.tun.offload);
  CHECK(cfg.metrics.listen->str() == "127.0.0.1:9464");
  CHECK(cfg.daemon.user == "vpmtun");
  CHECK(cfg.daemon.name == "node-a");
  CHECK(cfg.daemon.on_ready == "announce 10.99.0.0/24");
  CHECK(cfg.daemon.on_drain == "withdraw 10.99.0.0/24; sleep 2");
  CHECK(cfg.daemon.on_stop.empty());
  CHECK(cfg.daemon.hook_timeout_ms == 30000);
  CHECK(cfg.vpm.range_lo == 30000);
  CHECK(cfg.vpm.range_hi == 30099);
  CHECK(cfg.vpm.allocation == vpm::Allocation::per_connection);
  CHECK(cfg.vpm.queue_timeout_ms == 250);
  CHECK(cfg.vpm.max_flows == 1000);
  CHECK(cfg.timeouts.tcp_established_ms == 3600000);
  CHECK(cfg.timeouts.tcp_closed_ms == 5000);
  CHECK(cfg.timeouts.udp_ms == 30000);
  CHECK(cfg.timeouts.tcp_handshake_ms == 3000);
  CHECK(cfg.timeouts.udp_unreplied_ms == 10000);
  REQUIRE(cfg.apps.size() == 1);
  auto& a = cfg.apps[0];
  REQUIRE(a.listen.size() == 2);
  CHECK(a.listen[1].proto == vpm::Proto::udp);
  CHECK(a.listen[1].at.str() == "[2001:db8::10]:9000");
  REQUIRE(a.clients.size() == 5);
  CHECK_FALSE(a.clients[0].exact);
  CHECK(a.clients[1].exact);
  CHECK(a.clients[2].exact);
  CHECK(a.clients[2].pair.str() == "[2001:db8::7]:5000");
  CHECK(a.clients[4].prefix.str() == "203.0.113.9/32");
  CHECK(a.forward->str() == "127.0.0.1:19001");
  CHECK(a.proxy_protocol_v2);
}

TEST_CASE("apps of one aid may repeat each other's client rules; exec apps name their users") {
  std::string text = std::string(kApp) +
                     "[[app]]\nname = \"blue-2\"\naid = 101\nlisten = [\"192.0.2.10:9000\"]\n"
                     "clients = [\"198.51.100.0/24\"]\nserve = \"exec\"\n"
                     "users = [\"www-data\", \"1000\"]\n"
                     "[vpm]\ncontrol_socket = \"/run/x/vpmtun.sock\"\n";
  auto r = vpm::parse_config(text, "t.toml");
  auto* cfg = std::get_if<vpm::Config>(&r);
  if (!cfg) FAIL(std::get<1>(r).front().str());
  CHECK(cfg->apps[1].serve == "exec");
  CHECK(cfg->apps[1].users == std::vector<std::string>{"www-data", "1000"});
  CHECK(vpm::app_socket_path(cfg->vpm) == "/run/x/vpmtun-app.sock");
  cfg->vpm.app_socket = "/tmp/lib.sock";
  CHECK(vpm::app_socket_path(cfg->vpm) == "/tmp/lib.sock");
}

TEST_CASE("cooperative mode: a server app, a client-only app, a file without [tun]") {
  std::string text =
      "[cooperative]\nkey_file = \"coop.key\"\n"
      "[[app]]\nname = \"store\"\naid = 101\nlisten = [\"192.0.2.10:6379\"]\n"
      "clients = [\"198.51.100.0/24\"]\nserve = \"exec\"\ncooperative = true\n"
      "[[app]]\nname = \"client\"\naid = 101\nremote = [\"192.0.2.10:6379\", "
      "\"[2001:db8::10]:9000/tcp\"]\n";
  auto r = vpm::parse_config(text, "t.toml");
  auto* cfg = std::get_if<vpm::Config>(&r);
  if (!cfg) FAIL(std::get<1>(r).front().str());
  CHECK_FALSE(cfg->tun.present);
  CHECK(cfg->cooperative.key_file == "coop.key");
  CHECK(cfg->apps[0].cooperative);
  CHECK(cfg->apps[1].listen.empty());
  CHECK(cfg->apps[1].remote.size() == 2);
  CHECK(vpm::runs_programs(cfg->apps[1]));
  CHECK(vpm::uses_cooperation(*cfg));
  vpm::Ruleset rules(*cfg);
  REQUIRE(rules.cooperative());
  CHECK(rules.listens()[0].negotiator_app == 0);
  CHECK(rules.coop_app(0, rules.listens()[0].p2_of_app[0]) == 0);
  CHECK(std::get<vpm::Config>(vpm::parse_config(std::string("[tun]\n") + kApp, "t.toml"))
            .tun.present);
}

TEST_CASE("configuration errors name line and key") {
  std::vector<ErrorCase> cases = {
      {"TOML syntax", "[vpm\n", 1, "", ""},
      {"unknown key", std::string("[vpm]\nalocation = \"per-app\"\n") + kApp, 2, "vpm.alocation",
       "unknown key"},
      {"bad range", std::string("[vpm]\nport_range = \"3-2\"\n") + kApp, 2, "vpm.port_range",
       "LOW-HIGH"},
      {"bad allocation", std::string("[vpm]\nallocation = \"random\"\n") + kApp, 2,
       "vpm.allocation", "per-app"},
      {"bad duration", std::string("[timeouts]\nudp = \"5 minutes\"\n") + kApp, 2, "timeouts.udp",
       "duration"},
      {"wrong type", std::string("[tun]\nmtu = \"big\"\n") + kApp, 2, "tun.mtu", "integer"},
      {"mtu too small for IPv6",
       std::string("[tun]\nmtu = 1000\naddress6 = \"fd00::1/64\"\n") + kApp, 2, "tun.mtu", "1280"},
      {"no apps", "[vpm]\n", 0, "app", "no [[app]]"},
      {"listen port out of range",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:70000\"]\nserve = \"echo\"\n", 4,
       "app[0].listen[0]", "1 to 65535"},
      {"listen inside hidden range",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:20001\"]\nserve = \"echo\"\n", 1,
       "app[0].listen", "inside vpm.port_range"},
      {"client prefix too long",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nclients = "
       "[\"198.51.100.0/33\"]\nserve = \"echo\"\n",
       5, "app[0].clients[0]", "longer than 32"},
      {"host bits",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nclients = "
       "[\"198.51.100.5/24\"]\nserve = \"echo\"\n",
       5, "app[0].clients[0]", "198.51.100.0/24"},
      {"an app name that would break a control line or a metrics label",
       "[[app]]\nname = \"shop a\\n\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = \"echo\"\n",
       2, "app[0].name", "'shop a\\x0a': 1 to 64 letters"},
      {"no aid", "[[app]]\nname = \"a\"\nlisten = [\"192.0.2.1:9000\"]\nserve = \"echo\"\n", 1,
       "app[0].aid", "needs an aid"},
      {"serve and forward",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = \"echo\"\nforward = "
       "\"127.0.0.1:1\"\n",
       6, "app[0]", "not both"},
      {"unknown service",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = \"chargen\"\n", 5,
       "app[0].serve", "built-in"},
      {"proxy protocol without forward",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = "
       "\"echo\"\nproxy_protocol = \"v2\"\n",
       6, "app[0].proxy_protocol", "forward"},
      {"duplicate name", std::string(kApp) + kApp, 9, "app[1].name", "already defined"},
      {"same rule twice",
       std::string(kApp) +
           "[[app]]\nname = \"green\"\naid = 102\nlisten = [\"192.0.2.10:9000\"]\nclients = "
           "[\"198.51.100.0/24\"]\nserve = \"echo\"\n",
       8, "app[1].clients", "already claimed by app 'blue'"},
      {"users on a built-in service",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = "
       "\"echo\"\nusers = [\"www-data\"]\n",
       6, "app[0].users", "serve = \"exec\" or an app with remote"},
      {"cooperative without a key",
       "[[app]]\nname = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = "
       "\"echo\"\ncooperative = true\n",
       0, "cooperative.key_file", "at least 32 bytes"},
      {"cooperative over UDP",
       "[cooperative]\nkey_file = \"k\"\n[[app]]\nname = \"a\"\naid = 1\nlisten = "
       "[\"192.0.2.1:9000/udp\"]\nserve = \"echo\"\ncooperative = true\n",
       8, "app[0].cooperative", "TCP only"},
      {"a UDP remote",
       "[cooperative]\nkey_file = \"k\"\n[[app]]\nname = \"a\"\naid = 1\nremote = "
       "[\"192.0.2.1:9000/udp\"]\n",
       6, "app[0].remote", "TCP only"},
      {"a client-only app that serves",
       "[cooperative]\nkey_file = \"k\"\n[[app]]\nname = \"a\"\naid = 1\nremote = "
       "[\"192.0.2.1:9000\"]\nserve = \"echo\"\n",
       7, "app[0]", "need a listen"},
      {"cooperative and per-connection",
       "[vpm]\nallocation = \"per-connection\"\n[cooperative]\nkey_file = \"k\"\n[[app]]\n"
       "name = \"a\"\naid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = \"echo\"\n"
       "cooperative = true\n",
       5, "app[0].cooperative", "per-app"},
      {"one stream, cooperative and not",
       "[cooperative]\nkey_file = \"k\"\n[[app]]\nname = \"a\"\naid = 1\nlisten = "
       "[\"192.0.2.1:9000\"]\nserve = \"echo\"\ncooperative = true\n[[app]]\nname = \"b\"\n"
       "aid = 1\nlisten = [\"192.0.2.1:9000\"]\nserve = \"echo\"\n",
       9, "app[1].cooperative", "as a whole"},
      {"unmatched names no app", std::string("[vpm]\nunmatched = \"nobody\"\n") + kApp, 2,
       "vpm.unmatched", "neither"},
      {"bad metrics address", std::string("[metrics]\nlisten = \"localhost\"\n") + kApp, 2,
       "metrics.listen", ""},
      {"empty daemon user", std::string("[daemon]\nuser = \"\"\n") + kApp, 2, "daemon.user",
       "must not be empty"},
      {"empty node name", std::string("[daemon]\nname = \"\"\n") + kApp, 2, "daemon.name",
       "1 to 64 letters"},
      {"node name with a space", std::string("[daemon]\nname = \"node 1\"\n") + kApp, 2,
       "daemon.name", "letters, digits"},
      {"hook not a string", std::string("[daemon]\non_drain = [\"a\"]\n") + kApp, 2,
       "daemon.on_drain", "must be a string"},
      {"bad hook timeout", std::string("[daemon]\nhook_timeout = \"soon\"\n") + kApp, 2,
       "daemon.hook_timeout", "not a duration"},
      {"range too small",
       std::string("[vpm]\nport_range = \"20000-20000\"\n") + kApp +
           "[[app]]\nname = \"green\"\naid = 102\nlisten = [\"192.0.2.10:9000\"]\nserve = "
           "\"echo\"\n",
       2, "vpm.port_range", "at least 2 ports"},
  };
  for (auto& c : cases) {
    SECTION(c.description) {
      auto r = vpm::parse_config(c.toml, "t.toml");
      auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&r);
      REQUIRE(errors);
      REQUIRE(!errors->empty());
      auto& e = errors->front();
      INFO(e.str());
      CHECK(e.file == "t.toml");
      CHECK(e.line == c.line);
      CHECK(e.key == c.key);
      CHECK(e.message.find(c.message_part) != std::string::npos);
    }
  }
}

TEST_CASE("all errors are reported at once") {
  auto r = vpm::parse_config("[vpm]\nallocation = \"x\"\nqueue_timeout_ms = -1\n[tun]\nmtu = 1\n",
                             "t.toml");
  auto* errors = std::get_if<std::vector<vpm::ConfigError>>(&r);
  REQUIRE(errors);
  CHECK(errors->size() == 3);
}
