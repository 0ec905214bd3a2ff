// libFuzzer target: arbitrary bytes through parse + translate, both ways.
//
// Oracles: nothing crashes or reads out of bounds (run under ASan/UBSan); a
// packet to_stack() translates comes back byte for byte from to_tun(),
// unless it carried a checksum field of 0xFFFF (one's complement's second
// zero, which a rewrite normalises to 0x0000).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vpm/engine.hpp"

namespace {

const char* kConfig = R"(
[vpm]
port_range = "20000-20099"
max_flows = 4096
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000", "[fd00:99::10]:9000/udp"]
clients = ["10.200.1.0/24", "fd00:200:1::/64", "10.0.0.0/8"]
serve = "echo"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000"]
clients = ["10.200.2.0/24", "fd00::/8", "10.200.1.7:40000"]
serve = "echo"
)";

vpm::Engine& engine() {
  static vpm::Engine* e = [] {
    auto r = vpm::parse_config(kConfig, "fuzz.toml");
    if (!std::holds_alternative<vpm::Config>(r)) std::abort();
    return new vpm::Engine(std::get<vpm::Config>(r));
  }();
  return *e;
}

// Any 0xFFFF word at a checksum position we might rewrite.
bool has_ffff_checksum(std::vector<uint8_t>& bytes) {
  vpm::PacketView v;
  if (vpm::parse_packet(bytes, v) != vpm::Drop::none || !v.has_l4) return false;
  auto ffff = [](const uint8_t* p) { return p[0] == 0xff && p[1] == 0xff; };
  const uint8_t* l4 = v.l4_ptr();
  if (v.proto == vpm::ipproto::tcp) return ffff(l4 + 16);
  if (v.proto == vpm::ipproto::udp) return false;  // UDP keeps 0xFFFF by its own rule
  if (ffff(l4 + 2)) return true;
  vpm::PacketView inner;
  if (vpm::parse_quoted(v.bytes.subspan(v.l4 + 8), v.v6, inner) != vpm::Drop::none || !inner.has_l4)
    return false;
  return inner.proto == vpm::ipproto::tcp && inner.l4_len() >= 18 && ffff(inner.l4_ptr() + 16);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static uint64_t clock = 0;
  clock += 7;
  std::vector<uint8_t> packet(data, data + size);
  std::vector<uint8_t> original = packet;
  vpm::Result r = engine().to_stack(packet, clock);
  if (r.verdict == vpm::Verdict::translated) {
    vpm::Result back = engine().to_tun(packet, clock);
    if (back.verdict != vpm::Verdict::translated) std::abort();
    if (packet != original && !has_ffff_checksum(original)) std::abort();
  } else if (packet != original) {
    std::abort();  // only translated packets may change
  }
  std::vector<uint8_t> again(data, data + size);
  engine().to_tun(again, clock);
  if ((clock & 0xfff) == 0) engine().expire(clock, 1024);
  return 0;
}
