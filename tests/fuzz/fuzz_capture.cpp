// libFuzzer target: arbitrary bytes as a capture file through `vpmtun
// replay`'s reading and writing (tools/vpmtun/pcap_io.cpp) and the engine,
// record by record, as replay runs them.
//
// Only classic pcap (either byte order, micro- or nanoseconds) is fuzzed:
// pcapng goes to libpcap, which is not ours. Oracles: nothing crashes or
// reads out of bounds (ASan/UBSan); a damaged capture is an exception with
// a message, never anything else; the output is never longer than the
// input (records are dropped or kept, never grown).
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>

#include "tools/vpmtun/pcap_io.hpp"
#include "vpm/engine.hpp"

namespace {

const char* kConfig = R"(
[vpm]
port_range = "20000-20099"
max_flows = 1024
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000"]
clients = ["10.200.1.0/24", "fd00:200:1::/64"]
serve = "echo"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000", "[fd00:99::10]:9000"]
clients = ["10.200.2.0/24", "fd00::/8"]
serve = "echo"
)";

vpm::Config config() {
  auto r = vpm::parse_config(kConfig, "fuzz.toml");
  if (!std::holds_alternative<vpm::Config>(r)) std::abort();
  return std::get<vpm::Config>(r);
}

bool classic_magic(const uint8_t* data, size_t size) {
  if (size < 4) return false;
  uint32_t m;
  std::memcpy(&m, data, 4);
  return m == 0xa1b2c3d4u || m == 0xa1b23c4du || m == 0xd4c3b2a1u || m == 0x4d3cb2a1u;
}

// A file in memory, named by a path the rewriter can open.
struct MemFile {
  int fd = ::memfd_create("capture", MFD_CLOEXEC);
  ~MemFile() { ::close(fd); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd); }
  off_t size() const {
    struct stat st {};
    ::fstat(fd, &st);
    return st.st_size;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!classic_magic(data, size)) return 0;
  static const vpm::Config cfg = config();
  MemFile in, out;
  if (in.fd < 0 || out.fd < 0) std::abort();
  if (::write(in.fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  vpm::Engine engine(cfg);  // a fresh one per input: inputs do not depend on each other
  try {
    vpmtun::CaptureRewriter capture(in.path(), out.path());
    uint64_t clock = 0;
    capture.run([&](const pcap_pkthdr& h, std::span<uint8_t> frame) {
      auto at = vpmtun::ip_offset(capture.linktype(), frame);
      if (!at) return true;
      clock = std::max<uint64_t>(clock, static_cast<uint64_t>(h.ts.tv_sec) * 1000);
      auto r = engine.to_stack(frame.subspan(*at), clock);
      return r.verdict == vpm::Verdict::translated || r.verdict == vpm::Verdict::passed;
    });
  } catch (const std::runtime_error& e) {
    if (std::strlen(e.what()) == 0) std::abort();  // every refusal says why
  }
  if (out.size() > static_cast<off_t>(size)) std::abort();
  return 0;
}
