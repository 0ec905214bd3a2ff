// Reading and writing pcap files with libpcap, keeping link type and timestamp precision.
#pragma once

#include <pcap/pcap.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vpmtun {

// Where the IP header starts in a frame of this link type, or nullopt for a
// frame that carries no IP packet (ARP, say). Handles 802.1Q/802.1ad tags.
std::optional<size_t> ip_offset(int linktype, std::span<const uint8_t> frame);
bool linktype_supported(int linktype);

// Reads a capture. Classic pcap files (either byte order, micro- or
// nanosecond) are mapped into memory and walked directly; anything else
// libpcap can read (pcapng) goes through libpcap.
class PcapReader {
 public:
  // Throws std::runtime_error naming the file on failure.
  explicit PcapReader(const std::string& path);
  ~PcapReader();
  PcapReader(const PcapReader&) = delete;
  PcapReader& operator=(const PcapReader&) = delete;

  // Next record, or false at the end. `data` stays valid until the next
  // call. Throws on a damaged file, naming the record.
  bool next(pcap_pkthdr& header, const uint8_t*& data);
  int linktype() const { return linktype_; }
  int snaplen() const { return snaplen_; }
  bool nanosecond() const { return nano_; }
  uint64_t file_size() const { return size_; }
  uint64_t position() const;

 private:
  bool next_mapped(pcap_pkthdr& header, const uint8_t*& data);

  std::string path_;
  pcap_t* pcap_ = nullptr;        // libpcap path
  const uint8_t* map_ = nullptr;  // mapped path
  size_t at_ = 0;
  bool swapped_ = false;
  uint64_t records_ = 0;
  int linktype_ = 0;
  int snaplen_ = 0;
  bool nano_ = false;
  uint64_t size_ = 0;
};

// Writes classic pcap files through one large buffer. The format is the
// plain one libpcap writes (and reads back); doing it here saves two locked
// stdio calls per packet, which dominated replay time.
class PcapWriter {
 public:
  PcapWriter(const std::string& path, int linktype, int snaplen, bool nanosecond);
  ~PcapWriter();
  PcapWriter(const PcapWriter&) = delete;
  PcapWriter& operator=(const PcapWriter&) = delete;

  // Appends a record and returns where its data now lies in the buffer, so
  // the caller can edit it in place; discard_last() takes it back out.
  uint8_t* append(const pcap_pkthdr& header, const uint8_t* data);
  void discard_last() { used_ = last_; }
  void close();  // flushes; throws if the disk said no

 private:
  void flush();

  std::string path_;
  int fd_ = -1;
  std::vector<uint8_t> buf_;
  size_t used_ = 0;
  size_t last_ = 0;
};

}  // namespace vpmtun
