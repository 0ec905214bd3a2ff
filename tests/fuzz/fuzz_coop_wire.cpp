// libFuzzer target: cooperative negotiation messages.
//
// Oracles: nothing crashes or reads out of bounds (run under ASan/UBSan).
// The input is tried as it is (it must fail the MAC unless the fuzzer
// forges HMAC-SHA256, which would be a finding), and with a correct MAC
// appended over it, so the parser behind the MAC is explored too: what
// opens seals back to the same bytes.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "vpm/coop_wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vpm::coop;
  static const std::vector<uint8_t> key(32, 7);
  constexpr uint64_t now = 1'800'000'000'000;
  std::string why;
  (void)open({data, size}, key, now, &why);
  std::vector<uint8_t> sealed(data, data + size);
  if (sealed.size() >= 4) {  // make the length field and the MAC agree with the bytes
    size_t rest = sealed.size() - 4 + kMacBytes;
    sealed[2] = static_cast<uint8_t>(rest >> 8);
    sealed[3] = static_cast<uint8_t>(rest);
  }
  uint8_t mac[kMacBytes];
  unsigned len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), sealed.data(), sealed.size(), mac,
       &len);
  sealed.insert(sealed.end(), mac, mac + kMacBytes);
  if (auto m = open(sealed, key, now, &why)) {
    if (seal(*m, key) != sealed) std::abort();
  }
  return 0;
}
