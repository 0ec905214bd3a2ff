// libFuzzer target: the application library's messages and VPMTUN_LISTEN.
//
// Oracles: nothing crashes or reads out of bounds (run under ASan/UBSan); a
// message decode() accepts encodes back to the same bytes (so nothing in a
// message is ignored or invented); listens that parse format back to text
// that parses to the same listens.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "vpm/app_wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vpm::appwire;
  std::span<const uint8_t> bytes(data, size);
  std::string why;
  if (auto m = decode(bytes, &why)) {
    auto again = encode(*m);
    if (again.size() != size || !std::equal(again.begin(), again.end(), data)) std::abort();
  }
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto listens = parse_listens(text)) {
    auto back = parse_listens(format_listens(*listens));
    if (!back || *back != *listens) std::abort();
    for (auto& l : *listens) (void)takes_bind(*listens, l.proto, l.vaddr, l.p1);
  }
  return 0;
}
