// The capture rewriter over many chunks: records that straddle buffers, the
// largest records, drops squeezed out, edits kept, order kept. And libpcap,
// loaded only when needed.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "tools/vpmtun/pcap_io.hpp"
#include "vpm/lazy_library.hpp"

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void put32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

}  // namespace

TEST_CASE("a capture of many chunks comes out whole, edited, in order") {
  char dir[] = "/tmp/vpmtun-pcap-XXXXXX";
  REQUIRE(::mkdtemp(dir));
  std::string in = std::string(dir) + "/in.pcap", out = std::string(dir) + "/out.pcap";
  std::string file, want;
  put32(file, 0xa1b2c3d4);  // microseconds, host order
  file += std::string("\x02\x00\x04\x00", 4);
  put32(file, 0);
  put32(file, 0);
  put32(file, 262144);  // snaplen
  put32(file, 101);     // raw IP
  want = file;
  std::mt19937 rng(7);
  // About 40 MB: 70 buffers' worth. Mostly small records, some of the
  // largest size, so that records of every size cross buffer boundaries.
  for (uint32_t i = 0; file.size() < 40'000'000; ++i) {
    uint32_t len = i % 97 == 0 ? 262144 : 20 + rng() % 1500;
    std::string rec;
    put32(rec, i);  // the record's number, as its timestamp
    put32(rec, 0);
    put32(rec, len);
    put32(rec, len);
    std::string data(len, static_cast<char>(i));
    file += rec + data;
    if (i % 3 != 0) {  // the rewriter keeps these, with the first byte edited
      data[0] = 'E';
      want += rec + data;
    }
  }
  std::ofstream(in, std::ios::binary) << file;
  uint32_t seen = 0;
  bool ordered = true;
  {
    vpmtun::CaptureRewriter rw(in, out);
    rw.run([&](const pcap_pkthdr& h, std::span<uint8_t> bytes) {
      ordered &= static_cast<uint32_t>(h.ts.tv_sec) == seen++;
      bytes[0] = 'E';
      return h.ts.tv_sec % 3 != 0;
    });
  }
  CHECK(ordered);
  std::string got = slurp(out);
  CHECK(got.size() == want.size());
  CHECK(got == want);

  // Cut inside the last record: the rewriter names it and stops.
  std::ofstream(in, std::ios::binary) << file.substr(0, file.size() - 7);
  vpmtun::CaptureRewriter cut(in, out);
  CHECK_THROWS_WITH(cut.run([](const pcap_pkthdr&, std::span<uint8_t>) { return true; }),
                    Catch::Contains("is cut short by the end of the file"));
  ::unlink(in.c_str());
  ::unlink(out.c_str());
  ::rmdir(dir);
}

TEST_CASE("a library loaded when needed is found by its SONAME, or named in the error") {
  vpm::LazyLibrary missing("libvpmtun-no-such.so.9", "the test");
  CHECK_THROWS_WITH(missing.function<void()>("f"),
                    Catch::Contains("the test needs libvpmtun-no-such.so.9"));
  vpm::LazyLibrary pcap(VPMTUN_LIBPCAP, "the test");
  auto* version = pcap.function<decltype(pcap_lib_version)>("pcap_lib_version");
  CHECK(std::string(version()).starts_with("libpcap version"));
  CHECK_THROWS_WITH(pcap.function<void()>("no_such_function"),
                    Catch::Contains("has no no_such_function"));
}
