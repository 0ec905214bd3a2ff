// libpcap wrappers for replay.
#include "pcap_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "vpm/lazy_library.hpp"

namespace vpmtun {

const Libpcap& libpcap() {
  static vpm::LazyLibrary lib(VPMTUN_LIBPCAP, "reading captures other than classic pcap");
  static const Libpcap p{
      lib.function<decltype(pcap_fopen_offline_with_tstamp_precision)>(
          "pcap_fopen_offline_with_tstamp_precision"),
      lib.function<decltype(pcap_next_ex)>("pcap_next_ex"),
      lib.function<decltype(pcap_datalink)>("pcap_datalink"),
      lib.function<decltype(pcap_snapshot)>("pcap_snapshot"),
      lib.function<decltype(pcap_geterr)>("pcap_geterr"),
      lib.function<decltype(pcap_close)>("pcap_close"),
      lib.function<decltype(pcap_datalink_val_to_name)>("pcap_datalink_val_to_name")};
  return p;
}

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

// The largest record we accept: libpcap's own limit for ordinary link types.
constexpr uint32_t kMaxRecord = 262144;
constexpr size_t kChunk = size_t{1} << 19;  // stays in L2 between read, edit and write

std::string damaged(const std::string& path, uint64_t record, const std::string& what) {
  return path + ": damaged capture: record " + std::to_string(record) + " " + what;
}

// Reads until `n` bytes or the end; returns how many were read, or -1.
ssize_t read_full(int fd, uint8_t* at, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, at + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// A stream for libpcap that gives back the bytes already read to tell the
// format, then the rest of the descriptor, which may be a pipe (no seeking).
struct PrefixedInput {
  int fd;
  uint8_t prefix[24];
  size_t prefix_len, prefix_at = 0;
  uint64_t* consumed;  // bytes handed to libpcap so far
};

ssize_t prefixed_read(void* cookie, char* buf, size_t n) {
  auto* in = static_cast<PrefixedInput*>(cookie);
  ssize_t r;
  if (in->prefix_at < in->prefix_len) {
    r = static_cast<ssize_t>(std::min(n, in->prefix_len - in->prefix_at));
    std::memcpy(buf, in->prefix + in->prefix_at, static_cast<size_t>(r));
    in->prefix_at += static_cast<size_t>(r);
  } else {
    do r = ::read(in->fd, buf, n);
    while (r < 0 && errno == EINTR);
  }
  if (r > 0) *in->consumed += static_cast<uint64_t>(r);
  return r;
}

int prefixed_close(void* cookie) {
  delete static_cast<PrefixedInput*>(cookie);
  return 0;
}

}  // namespace

CaptureRewriter::CaptureRewriter(const std::string& input, const std::string& output)
    : in_path_(input == "-" ? "standard input" : input),
      out_path_(output == "-" ? "standard output" : output),
      to_stdout_(output == "-") {
  if (input == "-") {
    if (::isatty(STDIN_FILENO))
      throw std::runtime_error("standard input is a terminal; pipe a capture into it");
    in_fd_ = ::fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
  } else {
    in_fd_ = ::open(input.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (in_fd_ < 0) throw std::runtime_error(in_path_ + ": " + std::strerror(errno));
  struct stat st {};
  ::fstat(in_fd_, &st);
  if (S_ISREG(st.st_mode))
    size_ = static_cast<uint64_t>(st.st_size);
  else
    streaming_ = true;
  // Read, not pread: the input may be a pipe, and classic pcap goes on from here.
  ssize_t got = read_full(in_fd_, file_header_, sizeof file_header_);
  if (got < 0) throw std::runtime_error(in_path_ + ": " + std::strerror(errno));
  uint32_t magic = 0;
  bool classic = false;
  if (got == 24) {
    std::memcpy(&magic, file_header_, 4);
    classic = magic == 0xa1b2c3d4u || magic == 0xa1b23c4du;
    swapped_ = magic == 0xd4c3b2a1u || magic == 0x4d3cb2a1u;
  }
  if (classic || swapped_) {
    nano_ = magic == 0xa1b23c4du || magic == 0x4d3cb2a1u;
    uint32_t snap, lt;
    std::memcpy(&snap, file_header_ + 16, 4);
    std::memcpy(&lt, file_header_ + 20, 4);
    if (swapped_) snap = swap32(snap), lt = swap32(lt);
    snaplen_ = static_cast<int>(snap);
    // The file holds a LINKTYPE_ value (low 16 bits); the API speaks DLT_.
    lt &= 0xffff;
    linktype_ = lt == 101 ? DLT_RAW : static_cast<int>(lt);
  } else {
    auto* cookie = new PrefixedInput{in_fd_, {}, static_cast<size_t>(got), 0, &consumed_};
    std::memcpy(cookie->prefix, file_header_, static_cast<size_t>(got));
    FILE* f = ::fopencookie(cookie, "r", {prefixed_read, nullptr, nullptr, prefixed_close});
    if (!f) {
      delete cookie;
      throw std::runtime_error(in_path_ + ": " + std::strerror(errno));
    }
    char err[PCAP_ERRBUF_SIZE] = {};
    pcap_ = libpcap().fopen(f, PCAP_TSTAMP_PRECISION_NANO, err);
    if (!pcap_) {
      std::fclose(f);
      throw std::runtime_error(in_path_ + ": not a capture file libpcap can read (" + err + ")");
    }
    nano_ = true;
    linktype_ = libpcap().datalink(pcap_);
    snaplen_ = libpcap().snapshot(pcap_);
  }
}

CaptureRewriter::~CaptureRewriter() {
  if (pcap_) libpcap().close(pcap_);
  if (in_fd_ >= 0) ::close(in_fd_);
  if (out_fd_ >= 0) ::close(out_fd_);
}

void CaptureRewriter::write_all(const uint8_t* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(out_fd_, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::runtime_error(out_path_ + ": write failed: " + std::strerror(errno));
    data += w;
    n -= static_cast<size_t>(w);
  }
}

void CaptureRewriter::run(const RecordFn& fn) {
  // Opened only now: a capture the caller turns down leaves an existing output as it was.
  if (to_stdout_) {
    if (::isatty(STDOUT_FILENO))
      throw std::runtime_error("standard output is a terminal; redirect it or pipe it on");
    out_fd_ = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  } else {
    out_fd_ = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (out_fd_ < 0) throw std::runtime_error(out_path_ + ": cannot write: " + std::strerror(errno));
  if (pcap_)
    run_libpcap(fn);
  else
    run_classic(fn);
  int rc = ::close(out_fd_);
  out_fd_ = -1;
  if (rc != 0) throw std::runtime_error(out_path_ + ": write failed: " + std::strerror(errno));
}

namespace {

// A queue between threads; pop() waits, and returns nothing once the queue
// is closed and empty.
template <typename T>
class Channel {
 public:
  void push(T v) {
    {
      std::lock_guard lock(m_);
      q_.push_back(std::move(v));
    }
    cv_.notify_one();
  }
  std::optional<T> pop() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return closed_ || !q_.empty(); });
    if (q_.empty()) return std::nullopt;
    T v = std::move(q_.front());
    q_.pop_front();
    return v;
  }
  void close() {
    {
      std::lock_guard lock(m_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<T> q_;
  bool closed_ = false;
};

}  // namespace

// Three threads, so that reading, editing and writing overlap: a reader
// fills buffers with kChunk bytes each, after a headroom that takes the
// partial record the previous buffer ended with (at most kMaxRecord + 16
// bytes, the only bytes ever copied); this thread edits records in place
// and squeezes out dropped ones; a writer writes each buffer's kept records
// and gives the buffer back to the reader. Records, and so the output, keep
// their order.
void CaptureRewriter::run_classic(const RecordFn& fn) {
  write_all(file_header_, 24);
  constexpr size_t kHeadroom = kMaxRecord + 16;
  constexpr int kBuffers = 4;
  struct Filled {
    int buf;    // -1: the end of the input
    size_t n;   // bytes read into it after the headroom
    int error;  // errno of a failed read
  };
  struct Write {
    int buf;
    size_t at, n;
  };
  // Left uninitialized: a page is touched only when a read or a carried record fills it.
  std::unique_ptr<uint8_t[]> bufs[kBuffers];
  for (auto& b : bufs) b.reset(new uint8_t[kHeadroom + kChunk]);
  Channel<int> free_bufs;
  Channel<Filled> filled;
  Channel<Write> writes;
  for (int i = 0; i < kBuffers; ++i) free_bufs.push(i);

  std::thread reader([&] {
    for (;;) {
      auto b = free_bufs.pop();
      if (!b) return;
      uint8_t* at = bufs[*b].get() + kHeadroom;
      size_t n = 0;
      bool end = false;
      // A file fills whole chunks; a pipe's records go on as they come.
      while (n < kChunk && !(n > 0 && streaming_)) {
        ssize_t r = ::read(in_fd_, at + n, kChunk - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
          filled.push({*b, n, errno});
          return;
        }
        if (r == 0) {
          end = true;
          break;
        }
        n += static_cast<size_t>(r);
      }
      if (n > 0) filled.push({*b, n, 0});
      if (end) {
        filled.push({-1, 0, 0});
        return;
      }
    }
  });
  std::string write_error;
  std::thread writer([&] {
    while (auto w = writes.pop()) {
      if (write_error.empty()) {
        try {
          write_all(bufs[w->buf].get() + w->at, w->n);
        } catch (const std::exception& e) {
          write_error = e.what();
        }
      }
      free_bufs.push(w->buf);
    }
  });
  auto stop = [&] {
    free_bufs.close();
    filled.close();
    writes.close();
    reader.join();
    writer.join();
  };

  try {
    uint64_t records = 0;
    consumed_ = 24;
    size_t carried = 0;  // bytes of a partial record waiting in the next buffer's headroom
    std::vector<uint8_t> carry(kHeadroom);
    for (;;) {
      auto f = filled.pop();
      if (!f || f->buf < 0) {
        if (carried)
          throw std::runtime_error(
              damaged(in_path_, records + 1, "is cut short by the end of the file"));
        break;
      }
      if (f->error) throw std::runtime_error(in_path_ + ": " + std::strerror(f->error));
      uint8_t* buf = bufs[f->buf].get();
      size_t start = kHeadroom - carried, end = kHeadroom + f->n;
      std::memcpy(buf + start, carry.data(), carried);
      size_t pos = start, kept = start;
      while (end - pos >= 16) {
        uint32_t rec[4];
        std::memcpy(rec, buf + pos, 16);
        if (swapped_)
          for (auto& v : rec) v = swap32(v);
        if (rec[2] > kMaxRecord)
          throw std::runtime_error(
              damaged(in_path_, records + 1, "claims " + std::to_string(rec[2]) + " bytes"));
        if (end - pos - 16 < rec[2]) break;  // the rest of it comes with the next buffer
        pcap_pkthdr h{};
        h.ts.tv_sec = static_cast<time_t>(rec[0]);
        h.ts.tv_usec = static_cast<suseconds_t>(rec[1]);
        h.caplen = rec[2];
        h.len = rec[3];
        ++records;
        size_t size = 16 + rec[2];
        if (fn(h, {buf + pos + 16, rec[2]})) {
          if (kept != pos) std::memmove(buf + kept, buf + pos, size);
          kept += size;
        }
        pos += size;
        consumed_ += size;
      }
      carried = end - pos;
      std::memcpy(carry.data(), buf + pos, carried);
      writes.push({f->buf, start, kept - start});
    }
  } catch (...) {
    stop();
    throw;
  }
  stop();
  if (!write_error.empty()) throw std::runtime_error(write_error);
}

void CaptureRewriter::run_libpcap(const RecordFn& fn) {
  // Classic pcap out: header in host order, nanosecond timestamps (we asked libpcap for those).
  struct {
    uint32_t magic;
    uint16_t major, minor;
    int32_t thiszone;
    uint32_t sigfigs, snaplen, linktype;
  } h{0xa1b23c4du, 2, 4, 0, 0, static_cast<uint32_t>(snaplen_), dlt_to_linktype(linktype_)};
  std::vector<uint8_t> out;
  out.reserve(kChunk + kMaxRecord + 16);
  out.insert(out.end(), reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + 24);
  pcap_pkthdr* ph = nullptr;
  const uint8_t* data = nullptr;
  int rc;
  while ((rc = libpcap().next(pcap_, &ph, &data)) == 1) {
    size_t at = out.size();
    uint32_t rec[4] = {static_cast<uint32_t>(ph->ts.tv_sec), static_cast<uint32_t>(ph->ts.tv_usec),
                       ph->caplen, ph->len};
    out.insert(out.end(), reinterpret_cast<uint8_t*>(rec), reinterpret_cast<uint8_t*>(rec) + 16);
    out.insert(out.end(), data, data + ph->caplen);
    if (!fn(*ph, {out.data() + at + 16, ph->caplen})) out.resize(at);
    if (out.size() >= kChunk || streaming_) {
      write_all(out.data(), out.size());
      out.clear();
    }
  }
  if (rc != PCAP_ERROR_BREAK)
    throw std::runtime_error(in_path_ + ": damaged capture: " + libpcap().geterr(pcap_));
  write_all(out.data(), out.size());
}

}  // namespace vpmtun
