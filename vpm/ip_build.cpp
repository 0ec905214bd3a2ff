// IP headers and upper-layer checksums for packets vpmtun makes itself.
#include "vpm/ip_build.hpp"

#include <cstring>

#include "vpm/checksum.hpp"

namespace vpm {

size_t build_ip_header(const PacketView& v, bool reply, uint8_t proto, size_t l4_len,
                       std::vector<uint8_t>& out) {
  const uint8_t* in = v.bytes.data();
  size_t src = v.v6 ? 8 : 12, dst = v.v6 ? 24 : 16, alen = v.v6 ? 16 : 4;
  if (reply) std::swap(src, dst);
  if (v.v6) {
    out.assign(40 + l4_len, 0);
    out[0] = 0x60;
    store16(&out[4], static_cast<uint16_t>(l4_len));
    out[6] = proto;
    out[7] = 64;
    std::memcpy(&out[8], in + src, alen);
    std::memcpy(&out[24], in + dst, alen);
    return 40;
  }
  out.assign(20 + l4_len, 0);
  out[0] = 0x45;
  store16(&out[2], static_cast<uint16_t>(20 + l4_len));
  out[8] = 64;
  out[9] = proto;
  std::memcpy(&out[12], in + src, alen);
  std::memcpy(&out[16], in + dst, alen);
  store16(&out[10], finish(sum_words({out.data(), 20})));
  return 20;
}

uint16_t l4_checksum(const std::vector<uint8_t>& out, bool v6, size_t l4, uint8_t proto) {
  size_t len = out.size() - l4;
  uint64_t sum = v6 ? sum_words({&out[8], 32}) : sum_words({&out[12], 8});
  sum += proto + len;
  return finish(sum_words({&out[l4], len}, sum));
}

}  // namespace vpm
