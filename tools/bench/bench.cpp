// vpmtun-bench: makes benchmark captures, times the engine in memory, and
// measures short-connection rates.
//
//   vpmtun-bench gen OUT.pcap COUNT          mixed TCP/UDP, IPv4/IPv6, small payloads
//   vpmtun-bench engine IN.pcap -c CONFIG     packets per second on one core
//   vpmtun-bench serve ADDR:PORT              answers "ok\n" to each connection and closes
//   vpmtun-bench connect ADDR:PORT SECONDS PARALLEL
//                                             short connections (connect, read to the
//                                             end, close), PARALLEL at a time; prints
//                                             connections per second
#include <fmt/core.h>
#include <pcap/pcap.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "vpm/checksum.hpp"
#include "vpm/engine.hpp"

namespace {

using Bytes = std::vector<uint8_t>;

void put16(uint8_t* p, uint16_t v) { vpm::store16(p, v); }

// One packet between client `c` and the virtual address, checksums valid.
Bytes make_packet(bool v6, bool udp, bool inbound, uint32_t c, uint16_t cport, size_t payload,
                  std::mt19937& rng) {
  size_t ip_len = v6 ? 40 : 20, l4_len = (udp ? 8 : 20) + payload;
  Bytes p(ip_len + l4_len, 0);
  uint8_t client[16] = {}, vip[16] = {};
  if (v6) {
    const uint8_t cp[] = {0xfd, 0, 0x02, 0, 0, 1};
    const uint8_t vp[] = {0xfd, 0, 0, 0x99};
    std::copy(std::begin(cp), std::end(cp), client);
    std::copy(std::begin(vp), std::end(vp), vip);
    client[14] = static_cast<uint8_t>(c >> 8), client[15] = static_cast<uint8_t>(c);
    vip[15] = 0x10;
  } else {
    client[0] = 10, client[1] = 200, client[2] = static_cast<uint8_t>(1 + c % 2),
    client[3] = static_cast<uint8_t>(c);
    vip[0] = 10, vip[1] = 99, vip[2] = 0, vip[3] = 10;
  }
  const uint8_t* src = inbound ? client : vip;
  const uint8_t* dst = inbound ? vip : client;
  size_t alen = v6 ? 16 : 4;
  uint8_t proto = udp ? 17 : 6;
  if (v6) {
    p[0] = 0x60;
    put16(&p[4], static_cast<uint16_t>(l4_len));
    p[6] = proto;
    p[7] = 64;
    std::copy(src, src + 16, &p[8]);
    std::copy(dst, dst + 16, &p[24]);
  } else {
    p[0] = 0x45;
    put16(&p[2], static_cast<uint16_t>(p.size()));
    p[8] = 64;
    p[9] = proto;
    std::copy(src, src + 4, &p[12]);
    std::copy(dst, dst + 4, &p[16]);
    put16(&p[10], vpm::finish(vpm::sum_words({p.data(), 20})));
  }
  uint8_t* l4 = &p[ip_len];
  put16(l4, inbound ? cport : 9000);
  put16(l4 + 2, inbound ? 9000 : cport);
  if (udp) {
    put16(l4 + 4, static_cast<uint16_t>(l4_len));
  } else {
    l4[12] = 5 << 4;
    l4[13] = 0x18;  // PSH ACK
    put16(l4 + 14, 512);
  }
  for (size_t i = 0; i < payload; ++i) l4[(udp ? 8 : 20) + i] = static_cast<uint8_t>(rng());
  uint64_t sum = vpm::sum_words({src, alen}) + vpm::sum_words({dst, alen}) + proto + l4_len;
  sum = vpm::sum_words({l4, l4_len}, sum);
  uint16_t check = vpm::finish(sum);
  if (udp && check == 0) check = 0xffff;
  put16(l4 + (udp ? 6 : 16), check);
  return p;
}

int gen(const std::string& path, uint64_t count) {
  pcap_t* dead = pcap_open_dead(DLT_RAW, 65535);
  pcap_dumper_t* out = pcap_dump_open(dead, path.c_str());
  if (!out) {
    fmt::print(stderr, "{}: {}\n", path, pcap_geterr(dead));
    return 1;
  }
  std::mt19937 rng(2024);
  constexpr uint32_t kClients = 4000;
  for (uint64_t n = 0; n < count; ++n) {
    auto c = static_cast<uint32_t>(rng() % kClients);
    bool v6 = c % 2;
    bool udp = c % 3 == 0;
    auto cport = static_cast<uint16_t>(30000 + c % 20000);
    Bytes p = make_packet(v6, udp, rng() % 3 != 0, c, cport, 16 + rng() % 112, rng);
    pcap_pkthdr h{};
    h.ts.tv_sec = static_cast<time_t>(1700000000 + n / 100000);
    h.ts.tv_usec = static_cast<suseconds_t>(n % 100000 * 10);
    h.caplen = h.len = static_cast<bpf_u_int32>(p.size());
    pcap_dump(reinterpret_cast<u_char*>(out), &h, p.data());
  }
  pcap_dump_close(out);
  pcap_close(dead);
  return 0;
}

int engine(const std::string& path, const std::string& config_path) {
  std::ifstream in(config_path);
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = vpm::parse_config(text.str(), config_path);
  if (!std::holds_alternative<vpm::Config>(parsed)) {
    for (auto& e : std::get<std::vector<vpm::ConfigError>>(parsed))
      fmt::print(stderr, "{}\n", e.str());
    return 1;
  }
  auto cfg = std::get<vpm::Config>(parsed);
  cfg.vpm.max_flows = 1 << 20;
  char err[PCAP_ERRBUF_SIZE];
  pcap_t* pc = pcap_open_offline(path.c_str(), err);
  if (!pc || pcap_datalink(pc) != DLT_RAW) {
    fmt::print(stderr, "{}: need a raw-IP capture ({})\n", path, pc ? "wrong link type" : err);
    return 1;
  }
  // All packets in one buffer, as a TUN batch would hold them.
  Bytes arena;
  std::vector<std::pair<size_t, size_t>> packets;
  pcap_pkthdr* h;
  const u_char* data;
  while (pcap_next_ex(pc, &h, &data) == 1) {
    packets.emplace_back(arena.size(), h->caplen);
    arena.insert(arena.end(), data, data + h->caplen);
  }
  pcap_close(pc);
  vpm::Engine e(cfg);
  // Translate every packet in place to the stack side, then back: each
  // round leaves the arena as it found it.
  auto run = [&](vpm::Side side) {
    for (auto& [at, len] : packets) {
      std::span<uint8_t> p{arena.data() + at, len};
      if (side == vpm::to_stack_side)
        e.to_stack(p, 1000);
      else
        e.to_tun(p, 1000);
    }
  };
  std::vector<double> fwd, rev;
  for (int round = 0; round < 7; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    run(vpm::to_stack_side);
    auto t1 = std::chrono::steady_clock::now();
    run(vpm::to_tun_side);
    auto t2 = std::chrono::steady_clock::now();
    fwd.push_back(static_cast<double>(packets.size()) /
                  std::chrono::duration<double>(t1 - t0).count());
    rev.push_back(static_cast<double>(packets.size()) /
                  std::chrono::duration<double>(t2 - t1).count());
  }
  std::sort(fwd.begin(), fwd.end());
  std::sort(rev.begin(), rev.end());
  const auto& c = e.counters();
  fmt::print(
      "engine: {} packets x 7 rounds each way, {} flows; translated {}, dropped {}, refused {}\n",
      packets.size(), e.flows().size(), c.translated, c.dropped, c.refused);
  fmt::print("engine to_stack median {:.1f} Mpps (min {:.1f}, max {:.1f})\n", fwd[3] / 1e6,
             fwd[0] / 1e6, fwd[6] / 1e6);
  fmt::print("engine to_tun   median {:.1f} Mpps (min {:.1f}, max {:.1f})\n", rev[3] / 1e6,
             rev[0] / 1e6, rev[6] / 1e6);
  return 0;
}

socklen_t sockaddr_of(const std::string& text, sockaddr_storage& ss) {
  std::string why;
  auto ep = vpm::Endpoint::parse(text, &why);
  if (!ep) throw std::runtime_error(text + ": " + why);
  return vpm::to_sockaddr(*ep, ss);
}

int serve(const std::string& where) {
  sockaddr_storage ss;
  socklen_t len = sockaddr_of(where, ss);
  int l = ::socket(ss.ss_family, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(l, reinterpret_cast<sockaddr*>(&ss), len) < 0 || ::listen(l, 4096) < 0) {
    fmt::print(stderr, "serve {}: {}\n", where, std::strerror(errno));
    return 1;
  }
  for (;;) {
    int c = ::accept(l, nullptr, nullptr);
    if (c < 0) continue;
    (void)!::write(c, "ok\n", 3);
    ::close(c);
  }
}

int connect_rate(const std::string& where, double seconds, int parallel) {
  sockaddr_storage ss;
  socklen_t len = sockaddr_of(where, ss);
  int ep = epoll_create1(0);
  uint64_t done = 0, failed = 0;
  auto open_one = [&] {
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0 && errno != EINPROGRESS) {
      ++failed;
      ::close(fd);
      return;
    }
    epoll_event e{};
    e.events = EPOLLIN | EPOLLRDHUP;
    e.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  };
  auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  int open = 0;
  for (; open < parallel; ++open) open_one();
  char buf[256];
  while (open > 0) {
    epoll_event events[64];
    int n = epoll_wait(ep, events, 64, 5000);
    if (n <= 0) break;  // nothing for 5 s: count the rest as failed
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      ssize_t r;
      while ((r = ::read(fd, buf, sizeof buf)) > 0) {
      }
      if (r < 0 && errno == EAGAIN) continue;
      (r == 0 ? done : failed) += 1;
      ::close(fd);
      --open;
      if (elapsed() < seconds) {
        open_one();
        ++open;
      }
    }
  }
  failed += static_cast<uint64_t>(open);
  fmt::print("{:.0f} connections/s ({} in {:.1f} s, {} failed)\n",
             static_cast<double>(done) / elapsed(), done, elapsed(), failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 3 && args[0] == "gen") return gen(args[1], std::stoull(args[2]));
  if (args.size() == 4 && args[0] == "engine" && args[2] == "-c") return engine(args[1], args[3]);
  if (args.size() == 2 && args[0] == "serve") return serve(args[1]);
  if (args.size() == 4 && args[0] == "connect")
    return connect_rate(args[1], std::stod(args[2]), std::stoi(args[3]));
  fmt::print(stderr,
             "usage: vpmtun-bench gen OUT.pcap COUNT\n"
             "       vpmtun-bench engine IN.pcap -c CONFIG\n"
             "       vpmtun-bench serve ADDR:PORT\n"
             "       vpmtun-bench connect ADDR:PORT SECONDS PARALLEL\n");
  return 2;
}
