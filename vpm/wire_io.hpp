// Big-endian field writing and bounds-checked reading for vpmtun's own wire
// formats (the application library's messages, cooperative negotiation).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vpm/address.hpp"

namespace vpm::wire {

class Writer {
 public:
  void u8(uint8_t v) { out.push_back(v); }
  void u16(uint16_t v) {
    u8(static_cast<uint8_t>(v >> 8));
    u8(static_cast<uint8_t>(v));
  }
  void u32(uint32_t v) {
    u16(static_cast<uint16_t>(v >> 16));
    u16(static_cast<uint16_t>(v));
  }
  void u64(uint64_t v) {
    u32(static_cast<uint32_t>(v >> 32));
    u32(static_cast<uint32_t>(v));
  }
  void bytes(std::span<const uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); }
  void addr(const IpAddr& a) { bytes(a.bytes); }
  void endpoint(const Endpoint& e) {
    addr(e.addr);
    u16(e.port);
  }
  // A string of at most `bound` bytes (longer ones are cut), length first.
  void str(std::string_view s, size_t bound) {
    s = s.substr(0, bound);
    u16(static_cast<uint16_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
  }
  std::vector<uint8_t> out;
};

// Reads fields in order; the first that does not fit sets bad(), and every
// read after that yields zeros.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}
  uint8_t u8() {
    if (pos_ + 1 > b_.size()) return fail(), 0;
    return b_[pos_++];
  }
  uint16_t u16() {
    uint16_t hi = u8();
    return static_cast<uint16_t>(hi << 8 | u8());
  }
  uint32_t u32() {
    uint32_t hi = u16();
    return hi << 16 | u16();
  }
  uint64_t u64() {
    uint64_t hi = u32();
    return hi << 32 | u32();
  }
  void bytes(std::span<uint8_t> into) {
    if (pos_ + into.size() > b_.size()) return fail();
    std::memcpy(into.data(), b_.data() + pos_, into.size());
    pos_ += into.size();
  }
  IpAddr addr() {
    IpAddr a;
    bytes(a.bytes);
    return a;
  }
  Endpoint endpoint() {
    Endpoint e;
    e.addr = addr();
    e.port = u16();
    return e;
  }
  // A string written by Writer::str; longer than `bound` is a failure.
  std::string str(size_t bound) {
    size_t n = u16();
    if (n > bound || pos_ + n > b_.size()) return fail(), std::string();
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  bool done() const { return !bad_ && pos_ == b_.size(); }
  bool bad() const { return bad_; }

 private:
  void fail() { bad_ = true, pos_ = b_.size(); }
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  bool bad_ = false;
};

inline std::optional<Proto> proto_of(uint8_t v) {
  if (v == static_cast<uint8_t>(Proto::tcp)) return Proto::tcp;
  if (v == static_cast<uint8_t>(Proto::udp)) return Proto::udp;
  return std::nullopt;
}

}  // namespace vpm::wire
