// libFuzzer target: the daemon's whole data path and its control requests,
// over the in-memory device (no root, no sockets but the fake's).
//
// Input: records of [kind byte][length: 2 bytes][bytes]. Kind 0: a packet
// from a client (engine -> lwIP -> endpoints -> engine, what the daemon
// answers is thrown away); kind 1: a control request line; kind 2: the
// clock moves by `length` ms (timers, expiry, SYN cookie slots). Oracles:
// nothing crashes or reads out of bounds (ASan/UBSan), lwIP asserts
// nothing, and every answer to a control request is well formed.
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "tun/daemon.hpp"
#include "tun/device.hpp"

namespace {

const char* kConfig = R"(
[vpm]
port_range = "20000-20099"
max_flows = 512
stack_memory_mb = 16
control_socket = ""
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000", "[fd00:99::10]:9000/udp"]
clients = ["10.200.1.0/24", "fd00:200:1::/64", "10.0.0.0/8"]
serve = "http-info"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000", "10.99.0.10:7", "10.99.0.10:7/udp", "[fd00:99::10]:7"]
clients = ["10.200.2.0/24", "fd00::/8", "10.200.1.7:40000"]
serve = "echo"
)";

struct World {
  tun::FakeDevice device;
  tun::Daemon daemon;
  uint64_t now = 1'000'000;
  World() : daemon(config(), device, {}) { spdlog::set_level(spdlog::level::off); }
  static const vpm::Config& config() {
    static vpm::Config c = [] {
      auto r = vpm::parse_config(kConfig, "fuzz.toml");
      if (!std::holds_alternative<vpm::Config>(r)) std::abort();
      return std::get<vpm::Config>(r);
    }();
    return c;
  }
};

World& world() {
  static World* w = new World;
  return *w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  uint64_t asserts = w.daemon.stack().counters().lwip_asserts;
  for (size_t at = 0; at + 3 <= size;) {
    uint8_t kind = data[at] % 3;
    size_t len = size_t{data[at + 1]} << 8 | data[at + 2];
    at += 3;
    len = std::min(len, size - at);
    std::span<const uint8_t> body(data + at, len);
    at += len;
    if (kind == 0) {
      w.device.inbound.emplace_back(body.begin(), body.end());
      w.daemon.drain_device(w.now);
    } else if (kind == 1) {
      std::string request(body.begin(), body.end());
      if (request.starts_with("reload")) continue;  // reads a file: not this target's business
      auto [ok, answer] = w.daemon.answer(request);
      if (answer.empty() || answer.back() != '\n') std::abort();
      (void)ok;
    } else {
      w.now += len;
      w.daemon.tick(w.now);
    }
  }
  w.device.written.clear();
  w.device.written_mss.clear();
  if (w.daemon.stack().counters().lwip_asserts != asserts) std::abort();
  return 0;
}
