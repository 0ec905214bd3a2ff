// Reading and writing pcap files with libpcap, keeping link type and timestamp precision.
#pragma once

#include <pcap/pcap.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace vpmtun {

// Where the IP header starts in a frame of this link type, or nullopt for a
// frame that carries no IP packet (ARP, say). Handles 802.1Q/802.1ad tags.
std::optional<size_t> ip_offset(int linktype, std::span<const uint8_t> frame);
bool linktype_supported(int linktype);

class PcapReader {
 public:
  // Throws std::runtime_error naming the file on failure.
  explicit PcapReader(const std::string& path);
  ~PcapReader();
  PcapReader(const PcapReader&) = delete;
  PcapReader& operator=(const PcapReader&) = delete;

  // Next record, or false at the end. Throws on a damaged file.
  bool next(pcap_pkthdr& header, const uint8_t*& data);
  int linktype() const { return pcap_datalink(pcap_); }
  int snaplen() const { return pcap_snapshot(pcap_); }
  bool nanosecond() const { return nano_; }
  uint64_t file_size() const { return size_; }
  uint64_t position() const;

 private:
  std::string path_;
  pcap_t* pcap_ = nullptr;
  bool nano_ = false;
  uint64_t size_ = 0;
};

class PcapWriter {
 public:
  PcapWriter(const std::string& path, int linktype, int snaplen, bool nanosecond);
  ~PcapWriter();
  PcapWriter(const PcapWriter&) = delete;
  PcapWriter& operator=(const PcapWriter&) = delete;

  void write(const pcap_pkthdr& header, const uint8_t* data);
  void close();  // flushes; throws if the disk said no

 private:
  std::string path_;
  pcap_t* dead_ = nullptr;
  pcap_dumper_t* dumper_ = nullptr;
};

}  // namespace vpmtun
