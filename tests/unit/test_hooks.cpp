// The daemon's hooks: what a hook sees, their order, the time limit.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "tun/daemon.hpp"
#include "tun/hooks.hpp"

namespace {

vpm::Config config_with(const std::string& daemon_section) {
  auto parsed = vpm::parse_config(R"([tun]
name = "vpm3"
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
[daemon]
name = "node-b"
)" + daemon_section + R"(
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000"]
clients = ["0.0.0.0/0"]
serve = "echo"
)",
                                  "/etc/vpmtun/nodes.toml");
  REQUIRE(std::holds_alternative<vpm::Config>(parsed));
  return std::get<vpm::Config>(parsed);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("hooks run in order with the node's state in their environment") {
  char dir[] = "/tmp/vpmtun-hooks-XXXXXX";
  REQUIRE(::mkdtemp(dir));
  std::string log = std::string(dir) + "/log";
  std::string line = "echo \"$VPMTUN_STATE $VPMTUN_NAME $VPMTUN_DEVICE $VPMTUN_PREFIXES "
                     "$VPMTUN_CONFIG\" >> " + log;
  auto cfg = config_with("on_ready = '" + line + "'\non_drain = 'sleep 0.2; " + line +
                         "'\non_stop = '" + line + "; exit 3'\n");
  tun::Hooks hooks(cfg, "vpm3");
  CHECK(hooks.has(tun::HookState::ready));
  hooks.start(tun::HookState::ready, tun::monotonic_ms());
  hooks.start(tun::HookState::draining, tun::monotonic_ms());
  CHECK(hooks.busy());
  hooks.run_to_end(tun::HookState::stopped);
  CHECK_FALSE(hooks.busy());
  CHECK(slurp(log) ==
        "ready node-b vpm3 10.99.0.0/24 fd00:99::/64 /etc/vpmtun/nodes.toml\n"
        "draining node-b vpm3 10.99.0.0/24 fd00:99::/64 /etc/vpmtun/nodes.toml\n"
        "stopped node-b vpm3 10.99.0.0/24 fd00:99::/64 /etc/vpmtun/nodes.toml\n");
  CHECK(hooks.counters().run == 3);
  CHECK(hooks.counters().failed == 1);  // on_stop's exit 3
  CHECK(hooks.counters().timed_out == 0);
  ::unlink(log.c_str());
  ::rmdir(dir);
}

TEST_CASE("a hook past its time limit is killed with what it started") {
  char dir[] = "/tmp/vpmtun-hooks-XXXXXX";
  REQUIRE(::mkdtemp(dir));
  std::string mark = std::string(dir) + "/late";
  // The background sleep is in the hook's process group: it goes too.
  auto cfg = config_with("hook_timeout = \"300ms\"\non_drain = '(sleep 1; touch " + mark +
                         ") & sleep 5'\n");
  tun::Hooks hooks(cfg, "vpm3");
  CHECK_FALSE(hooks.has(tun::HookState::ready));
  hooks.start(tun::HookState::ready, tun::monotonic_ms());  // none: nothing runs
  CHECK_FALSE(hooks.busy());
  uint64_t t0 = tun::monotonic_ms();
  hooks.run_to_end(tun::HookState::draining);
  uint64_t took = tun::monotonic_ms() - t0;
  CHECK(took >= 300);
  CHECK(took < 2000);
  CHECK(hooks.counters().timed_out == 1);
  ::usleep(1'200'000);
  CHECK(::access(mark.c_str(), F_OK) != 0);
  ::rmdir(dir);
}

TEST_CASE("a hook's output is logged line by line, bounded") {
  std::ostringstream logged;
  auto before = spdlog::default_logger();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(logged);
  sink->set_pattern("%v");
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  // A line on each stream, one longer than a log line takes, then a flood
  // that does not end with a newline.
  auto cfg = config_with(
      "on_ready = 'echo to stdout; echo to stderr >&2; head -c 600 /dev/zero | tr \"\\\\0\" x; "
      "echo; seq 5000; printf tail'\n");
  tun::Hooks hooks(cfg, "vpm3");
  hooks.run_to_end(tun::HookState::ready);
  spdlog::set_default_logger(before);
  std::string log = logged.str();
  CHECK(log.find("on_ready: to stdout\n") != std::string::npos);
  CHECK(log.find("on_ready: to stderr\n") != std::string::npos);
  CHECK(log.find("on_ready: " + std::string(512, 'x') + "\n") != std::string::npos);
  CHECK(log.find("on_ready: " + std::string(88, 'x') + "\n") != std::string::npos);
  CHECK(log.find("on_ready: 96\n") != std::string::npos);  // the 100th line
  CHECK(log.find("on_ready: 97\n") == std::string::npos);
  CHECK(log.find("on_ready: 4905 more lines not logged") != std::string::npos);
  CHECK(hooks.counters().failed == 0);
}
