// libpcap wrappers for replay.
#include "pcap_io.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace vpmtun {

namespace {

// libpcap's DLT_ values are what the API speaks; files carry LINKTYPE_
// values. They agree except for a few, of which raw IP matters here.
uint32_t dlt_to_linktype(int dlt) {
  switch (dlt) {
    case DLT_RAW:
      return 101;  // LINKTYPE_RAW
    default:
      return static_cast<uint32_t>(dlt);
  }
}

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
    case DLT_LOOP:
      return true;
    default:
      return false;
  }
}

std::optional<size_t> ip_offset(int linktype, std::span<const uint8_t> f) {
  switch (linktype) {
    case DLT_RAW:
    case DLT_IPV4:
    case DLT_IPV6:
      return 0;
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
      uint32_t le =
          uint32_t{f[0]} | uint32_t{f[1]} << 8 | uint32_t{f[2]} << 16 | uint32_t{f[3]} << 24;
      uint32_t be =
          uint32_t{f[3]} | uint32_t{f[2]} << 8 | uint32_t{f[1]} << 16 | uint32_t{f[0]} << 24;
      uint32_t af = linktype == DLT_LOOP ? be : (le < 256 ? le : be);
      if (af == 2 || af == 10 || af == 24 || af == 28 || af == 30) return 4;
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

namespace {

uint32_t swap32(uint32_t v) { return __builtin_bswap32(v); }

}  // namespace

PcapReader::PcapReader(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  size_ = static_cast<uint64_t>(st.st_size);
  uint32_t magic = 0;
  if (size_ >= 24 && ::pread(fd, &magic, 4, 0) == 4) {
    bool classic = magic == 0xa1b2c3d4u || magic == 0xa1b23c4du;
    bool swapped = magic == 0xd4c3b2a1u || magic == 0x4d3cb2a1u;
    if (classic || swapped) {
      void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      if (m != MAP_FAILED) {
        ::madvise(m, size_, MADV_SEQUENTIAL);
        map_ = static_cast<const uint8_t*>(m);
        swapped_ = swapped;
        nano_ = magic == 0xa1b23c4du || magic == 0x4d3cb2a1u;
        uint32_t hdr[6];
        std::memcpy(hdr, map_, 24);
        snaplen_ = static_cast<int>(swapped ? swap32(hdr[4]) : hdr[4]);
        // The file holds a LINKTYPE_ value (low 16 bits); the API speaks DLT_.
        uint32_t lt = (swapped ? swap32(hdr[5]) : hdr[5]) & 0xffff;
        linktype_ = lt == 101 ? DLT_RAW : static_cast<int>(lt);
        at_ = 24;
        ::close(fd);
        return;
      }
    }
  }
  FILE* f = ::fdopen(fd, "rb");
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_ = f ? pcap_fopen_offline(f, err) : nullptr;
  if (!pcap_) {
    if (f)
      std::fclose(f);
    else
      ::close(fd);
    throw std::runtime_error(path + ": not a capture file libpcap can read (" + err + ")");
  }
  linktype_ = pcap_datalink(pcap_);
  snaplen_ = pcap_snapshot(pcap_);
}

PcapReader::~PcapReader() {
  if (pcap_) pcap_close(pcap_);
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

bool PcapReader::next_mapped(pcap_pkthdr& header, const uint8_t*& data) {
  if (at_ == size_) return false;
  if (size_ - at_ < 16)
    throw std::runtime_error(path_ + ": damaged capture: record " + std::to_string(records_ + 1) +
                             " has a truncated header");
  uint32_t rec[4];
  std::memcpy(rec, map_ + at_, 16);
  if (swapped_)
    for (auto& v : rec) v = swap32(v);
  if (rec[2] > size_ - at_ - 16 || rec[2] > (1u << 18))
    throw std::runtime_error(path_ + ": damaged capture: record " + std::to_string(records_ + 1) +
                             " claims " + std::to_string(rec[2]) + " bytes");
  header.ts.tv_sec = static_cast<time_t>(rec[0]);
  header.ts.tv_usec = static_cast<suseconds_t>(rec[1]);
  header.caplen = rec[2];
  header.len = rec[3];
  data = map_ + at_ + 16;
  at_ += 16 + rec[2];
  ++records_;
  return true;
}

bool PcapReader::next(pcap_pkthdr& header, const uint8_t*& data) {
  if (map_) return next_mapped(header, data);
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
  if (map_) return at_;
  FILE* f = pcap_file(pcap_);
  long at = f ? std::ftell(f) : -1;
  return at < 0 ? 0 : static_cast<uint64_t>(at);
}

PcapWriter::PcapWriter(const std::string& path, int linktype, int snaplen, bool nanosecond)
    : path_(path), buf_(size_t{1} << 20) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot write: " + std::strerror(errno));
  // Global header, host byte order as libpcap writes it; the magic says which.
  struct {
    uint32_t magic;
    uint16_t major, minor;
    int32_t thiszone;
    uint32_t sigfigs, snaplen, linktype;
  } h{nanosecond ? 0xa1b23c4du : 0xa1b2c3d4u,
      2,
      4,
      0,
      0,
      static_cast<uint32_t>(snaplen),
      dlt_to_linktype(linktype)};
  std::memcpy(buf_.data(), &h, sizeof h);
  used_ = sizeof h;
}

PcapWriter::~PcapWriter() {
  if (fd_ >= 0) ::close(fd_);
}

uint8_t* PcapWriter::append(const pcap_pkthdr& header, const uint8_t* data) {
  size_t need = 16 + header.caplen;
  if (used_ + need > buf_.size()) {
    flush();
    if (need > buf_.size()) buf_.resize(need);
  }
  uint32_t rec[4] = {static_cast<uint32_t>(header.ts.tv_sec),
                     static_cast<uint32_t>(header.ts.tv_usec), header.caplen, header.len};
  last_ = used_;
  std::memcpy(buf_.data() + used_, rec, 16);
  std::memcpy(buf_.data() + used_ + 16, data, header.caplen);
  used_ += need;
  return buf_.data() + last_ + 16;
}

void PcapWriter::flush() {
  size_t done = 0;
  while (done < used_) {
    ssize_t n = ::write(fd_, buf_.data() + done, used_ - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  used_ = 0;
  last_ = 0;
}

void PcapWriter::close() {
  if (fd_ < 0) return;
  flush();
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
}

}  // namespace vpmtun
