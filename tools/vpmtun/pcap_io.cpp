// libpcap wrappers for replay.
#include "pcap_io.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace vpmtun {

namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

constexpr uint16_t kEthIPv4 = 0x0800, kEthIPv6 = 0x86dd, kEthVlan = 0x8100, kEthQinQ = 0x88a8;

std::optional<size_t> after_ethertype(uint16_t type, size_t at) {
  if (type == kEthIPv4 || type == kEthIPv6) return at;
  return std::nullopt;
}

}  // namespace

bool linktype_supported(int linktype) {
  switch (linktype) {
    case DLT_RAW:
    case DLT_IPV4:
    case DLT_IPV6:
    case DLT_EN10MB:
    case DLT_LINUX_SLL:
    case DLT_LINUX_SLL2:
    case DLT_NULL:
    case DLT_LOOP: return true;
    default: return false;
  }
}

std::optional<size_t> ip_offset(int linktype, std::span<const uint8_t> f) {
  switch (linktype) {
    case DLT_RAW:
    case DLT_IPV4:
    case DLT_IPV6: return 0;
    case DLT_EN10MB: {
      if (f.size() < 14) return std::nullopt;
      size_t at = 12;
      uint16_t type = be16(&f[at]);
      while ((type == kEthVlan || type == kEthQinQ) && f.size() >= at + 6) {
        at += 4;
        type = be16(&f[at]);
      }
      return after_ethertype(type, at + 2);
    }
    case DLT_LINUX_SLL:
      if (f.size() < 16) return std::nullopt;
      return after_ethertype(be16(&f[14]), 16);
    case DLT_LINUX_SLL2:
      if (f.size() < 20) return std::nullopt;
      return after_ethertype(be16(&f[0]), 20);
    case DLT_NULL:
    case DLT_LOOP: {
      // Address family in host (NULL) or network (LOOP) order; IPv6 has several values.
      if (f.size() < 4) return std::nullopt;
      uint32_t le = uint32_t{f[0]} | uint32_t{f[1]} << 8 | uint32_t{f[2]} << 16 | uint32_t{f[3]} << 24;
      uint32_t be = uint32_t{f[3]} | uint32_t{f[2]} << 8 | uint32_t{f[1]} << 16 | uint32_t{f[0]} << 24;
      uint32_t af = linktype == DLT_LOOP ? be : (le < 256 ? le : be);
      if (af == 2 || af == 10 || af == 24 || af == 28 || af == 30) return 4;
      return std::nullopt;
    }
    default: return std::nullopt;
  }
}

PcapReader::PcapReader(const std::string& path) : path_(path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error(path + ": " + std::strerror(errno));
  // libpcap scales timestamps to the precision asked for; ask for the file's
  // own so a rewritten file keeps its timestamps bit for bit.
  uint8_t magic[4] = {};
  size_t got = std::fread(magic, 1, 4, f);
  std::fseek(f, 0, SEEK_END);
  size_ = static_cast<uint64_t>(std::ftell(f));
  std::rewind(f);
  nano_ = got == 4 && ((magic[0] == 0xa1 && magic[1] == 0xb2 && magic[2] == 0x3c && magic[3] == 0x4d) ||
                       (magic[0] == 0x4d && magic[1] == 0x3c && magic[2] == 0xb2 && magic[3] == 0xa1));
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_ = pcap_fopen_offline_with_tstamp_precision(
      f, nano_ ? PCAP_TSTAMP_PRECISION_NANO : PCAP_TSTAMP_PRECISION_MICRO, err);
  if (!pcap_) {
    std::fclose(f);
    throw std::runtime_error(path + ": not a capture file libpcap can read (" + err + ")");
  }
}

PcapReader::~PcapReader() {
  if (pcap_) pcap_close(pcap_);
}

bool PcapReader::next(pcap_pkthdr& header, const uint8_t*& data) {
  pcap_pkthdr* h = nullptr;
  int rc = pcap_next_ex(pcap_, &h, &data);
  if (rc == 1) {
    header = *h;
    return true;
  }
  if (rc == PCAP_ERROR_BREAK) return false;
  throw std::runtime_error(path_ + ": damaged capture: " + pcap_geterr(pcap_));
}

uint64_t PcapReader::position() const {
  FILE* f = pcap_file(pcap_);
  long at = f ? std::ftell(f) : -1;
  return at < 0 ? 0 : static_cast<uint64_t>(at);
}

PcapWriter::PcapWriter(const std::string& path, int linktype, int snaplen, bool nanosecond)
    : path_(path) {
  dead_ = pcap_open_dead_with_tstamp_precision(
      linktype, snaplen, nanosecond ? PCAP_TSTAMP_PRECISION_NANO : PCAP_TSTAMP_PRECISION_MICRO);
  dumper_ = dead_ ? pcap_dump_open(dead_, path.c_str()) : nullptr;
  if (!dumper_) {
    std::string why = dead_ ? pcap_geterr(dead_) : "out of memory";
    if (dead_) pcap_close(dead_);
    throw std::runtime_error(path + ": cannot write: " + why);
  }
}

PcapWriter::~PcapWriter() {
  if (dumper_) pcap_dump_close(dumper_);
  if (dead_) pcap_close(dead_);
}

void PcapWriter::write(const pcap_pkthdr& header, const uint8_t* data) {
  pcap_dump(reinterpret_cast<u_char*>(dumper_), &header, data);
}

void PcapWriter::close() {
  if (!dumper_) return;
  bool ok = pcap_dump_flush(dumper_) == 0;
  pcap_dump_close(dumper_);
  dumper_ = nullptr;
  if (!ok) throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
}

}  // namespace vpmtun
