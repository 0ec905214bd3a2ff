// Rewriting capture files in place, keeping link type and timestamp precision.
#pragma once

#include <pcap/pcap.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vpmtun {

// The functions of libpcap that replay uses. libpcap is loaded the first time
// this is called (vpm/lazy_library.hpp), which a classic pcap never needs;
// throws std::runtime_error when it cannot be loaded.
struct Libpcap {
  decltype(&pcap_fopen_offline_with_tstamp_precision) fopen;
  decltype(&pcap_next_ex) next;
  decltype(&pcap_datalink) datalink;
  decltype(&pcap_snapshot) snapshot;
  decltype(&pcap_geterr) geterr;
  decltype(&pcap_close) close;
  decltype(&pcap_datalink_val_to_name) link_name;
};
const Libpcap& libpcap();

// Where the IP header starts in a frame of this link type, or nullopt for a
// frame that carries no IP packet (ARP, say). Handles 802.1Q/802.1ad tags.
std::optional<size_t> ip_offset(int linktype, std::span<const uint8_t> frame);
bool linktype_supported(int linktype);

// Rewrites a capture record by record: fn(header, frame) edits the frame in
// place and says whether to keep it.
//
// Classic pcap (either byte order, micro- or nanosecond) streams through a
// few buffers: a thread read(2)s chunks, the caller's thread edits records
// where they lie (fn runs there) and squeezes out the ones dropped, another
// thread write(2)s the chunks. File and record headers are kept as they are,
// so an untouched record comes out byte for byte. Anything else libpcap can
// read (pcapng) is read through libpcap and written as classic pcap.
//
// "-" names standard input or output. A pipe is read as it comes: each
// read(2) is edited and written at once, so a live capture (tcpdump -U -w -)
// flows through record by record.
class CaptureRewriter {
 public:
  using RecordFn = std::function<bool(const pcap_pkthdr&, std::span<uint8_t>)>;

  // Opens the input ("-": standard input) and reads its header; the output
  // ("-": standard output) is opened by run(). Throws std::runtime_error
  // naming the file on failure.
  CaptureRewriter(const std::string& input, const std::string& output);
  ~CaptureRewriter();
  CaptureRewriter(const CaptureRewriter&) = delete;
  CaptureRewriter& operator=(const CaptureRewriter&) = delete;

  int linktype() const { return linktype_; }
  bool nanosecond() const { return nano_; }
  uint64_t input_size() const { return size_; }
  uint64_t position() const { return consumed_; }  // input bytes read so far

  // Opens the output, runs fn over every record and finishes the output.
  // Throws on a damaged input (naming the record) or a failed write.
  void run(const RecordFn& fn);

 private:
  void run_classic(const RecordFn& fn);
  void run_libpcap(const RecordFn& fn);
  void write_all(const uint8_t* data, size_t n);

  std::string in_path_, out_path_;
  bool to_stdout_;
  int in_fd_ = -1, out_fd_ = -1;
  pcap_t* pcap_ = nullptr;  // set when the input is not classic pcap
  uint8_t file_header_[24] = {};
  bool swapped_ = false;
  int linktype_ = 0;
  int snaplen_ = 0;
  bool nano_ = false;
  uint64_t size_ = 0;       // 0 when the input is not a file
  bool streaming_ = false;  // a pipe or the like: records are passed on as they arrive
  uint64_t consumed_ = 0;
};

}  // namespace vpmtun
