// `vpmtun replay`: TUN-side capture to stack-side capture (or back) through the engine.
#include "replay.hpp"

#include <fmt/core.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "pcap_io.hpp"
#include "vpm/engine.hpp"

namespace vpmtun {

namespace {

constexpr uint64_t kSweepEveryMs = 1000;  // capture time between flow-expiry sweeps
constexpr int kDropsShownPerReason = 5;

class Progress {
 public:
  explicit Progress(uint64_t total) : total_(total), enabled_(isatty(STDERR_FILENO) == 1) {}
  // Call once per packet; `position` is only asked for now and then.
  template <typename Position>
  void update(uint64_t packets, Position position) {
    if (!enabled_ || (packets & 0xffff) != 0) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    if (total_ == 0) {  // a pipe: no end known
      fmt::print(stderr, "\r{} packets", packets);
    } else {
      double frac = static_cast<double>(position()) / static_cast<double>(total_);
      int filled = static_cast<int>(frac * 30);
      fmt::print(stderr, "\r[{:<30}] {:3.0f}% {} packets",
                 std::string(static_cast<size_t>(filled), '#'), frac * 100, packets);
    }
    shown_ = true;
  }
  ~Progress() {
    if (shown_) fmt::print(stderr, "\r{:60}\r", "");
  }

 private:
  uint64_t total_;
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

void print_summary(std::FILE* to, const ReplayOptions& opt, const vpm::Engine& engine,
                   uint64_t records, uint64_t non_ip, uint64_t snapped) {
  const auto& c = engine.counters();
  auto name = [](const std::string& path, const char* stream) {
    return path == "-" ? std::string(stream) : path;
  };
  fmt::print(to, "{} -> {} ({} view to {} view)\n", name(opt.input, "standard input"),
             name(opt.output, "standard output"), opt.reverse ? "stack" : "TUN",
             opt.reverse ? "TUN" : "stack");
  fmt::print(to, "  {:<22}{:>12}\n", "packets read", records);
  fmt::print(to, "  {:<22}{:>12}\n", "translated", c.translated);
  fmt::print(to, "  {:<22}{:>12}\n", "passed untouched", c.passed + non_ip);
  if (non_ip) fmt::print(to, "    {:<20}{:>12}\n", "of which not IP", non_ip);
  fmt::print(to, "  {:<22}{:>12}\n", "dropped", c.dropped);
  fmt::print(to, "  {:<22}{:>12}\n", "refused", c.refused);
  for (size_t r = 1; r < vpm::kDropCount; ++r)
    if (c.by_reason[r])
      fmt::print(to, "    {:<20}{:>12}  {}\n", vpm::drop_name(static_cast<vpm::Drop>(r)),
                 c.by_reason[r], vpm::drop_description(static_cast<vpm::Drop>(r)));
  if (!opt.reverse) fmt::print(to, "  {:<22}{:>12}\n", "flows created", c.flows_created);
  if (snapped)
    fmt::print(to,
               "  note: {} packets were cut short by the capture's snaplen and could not be "
               "translated; capture with -s 0\n",
               snapped);
}

}  // namespace

int replay(const vpm::Config& cfg, const ReplayOptions& opt) {
  if (opt.print && opt.output == "-") {
    spdlog::error("--print and -o - would both write to standard output; choose one");
    return 2;
  }
  std::error_code ec;
  if (opt.input != "-" && opt.output != "-" &&
      std::filesystem::equivalent(opt.input, opt.output, ec)) {
    spdlog::error("{}: the output would overwrite the input; choose another -o", opt.output);
    return 2;
  }
  try {
    CaptureRewriter capture(opt.input, opt.output);
    if (!linktype_supported(capture.linktype())) {
      const char* name = libpcap().link_name(capture.linktype());
      spdlog::error(
          "{}: link type {} ({}) is not supported; replay reads raw IP, Ethernet, "
          "Linux cooked (SLL, SLL2) and loopback captures",
          opt.input, capture.linktype(), name ? name : "unknown");
      return 2;
    }
    vpm::Engine engine(cfg);
    Progress progress(capture.input_size());
    std::array<int, vpm::kDropCount> shown{};
    uint64_t records = 0, non_ip = 0, snapped = 0, clock = 0, last_sweep = 0;
    const uint64_t ticks_per_ms = capture.nanosecond() ? 1000000 : 1000;

    capture.run([&](const pcap_pkthdr& hdr, std::span<uint8_t> bytes) {
      ++records;
      progress.update(records, [&] { return capture.position(); });
      auto at = ip_offset(capture.linktype(), bytes);
      if (!at) {
        ++non_ip;  // ARP and friends: not ours, kept so the capture stays whole
        return true;
      }
      uint64_t ts = static_cast<uint64_t>(hdr.ts.tv_sec) * 1000 +
                    static_cast<uint64_t>(hdr.ts.tv_usec) / ticks_per_ms;
      if (ts > clock) clock = ts;  // captures can step back; flows only see time go forward
      if (clock - last_sweep >= kSweepEveryMs) {
        engine.expire(clock, SIZE_MAX);
        last_sweep = clock;
      }
      auto ip = bytes.subspan(*at);
      std::string before = opt.print ? vpm::describe_packet(ip) : std::string();
      vpm::Result r = opt.reverse ? engine.to_tun(ip, clock) : engine.to_stack(ip, clock);
      bool keep = r.verdict == vpm::Verdict::translated || r.verdict == vpm::Verdict::passed;
      if (!keep) {
        if (r.reason == vpm::Drop::ip_total_length && hdr.caplen < hdr.len) ++snapped;
        auto i = static_cast<size_t>(r.reason);
        if (shown[i] < kDropsShownPerReason && !opt.quiet) {
          spdlog::warn("packet {}: {}: {}", records, vpm::verdict_name(r.verdict),
                       vpm::drop_description(r.reason));
          if (++shown[i] == kDropsShownPerReason)
            spdlog::warn("(further {} packets are counted, not shown)", vpm::drop_name(r.reason));
        }
      }
      if (opt.print) {
        std::string app = r.app == vpm::kNoApp ? "" : "  app " + cfg.apps[r.app].name;
        if (r.verdict == vpm::Verdict::translated)
          fmt::print("{:>7}  {}  =>  {}{}\n", records, before, vpm::describe_packet(ip), app);
        else
          fmt::print("{:>7}  {}  {}{}\n", records, before,
                     r.reason == vpm::Drop::none ? std::string("passed")
                                                 : std::string(vpm::verdict_name(r.verdict)) +
                                                       ": " + vpm::drop_name(r.reason),
                     app);
      }
      return keep;
    });
    // With -o - the capture owns standard output.
    if (!opt.quiet)
      print_summary(opt.output == "-" ? stderr : stdout, opt, engine, records, non_ip, snapped);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}

}  // namespace vpmtun
