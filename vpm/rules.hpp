// The compiled configuration: which (virtual address, p1, protocol) are
// multiplexed, which app each client belongs to, and where p2s come from.
//
// Theory of operation: a Listen is one multiplexed (vaddr, p1, proto). Its
// client rules are the union of the rules of every app that listens there;
// classify() picks the most exact one (an address:port pair beats any prefix,
// a longer prefix beats a shorter one). With per-app allocation each
// (vaddr, p1, AID) owns one p2, chosen from a hash of (p1, AID) with linear
// probing in a canonical order, so the same config always gives the same p2s
// and an app's p2 rarely moves when other apps come and go (and never on a
// reload, which passes the rules it replaces). With
// per-connection allocation the hidden range of each vaddr is cut into equal
// slices, one per distinct p1, so that any p2 names its p1 without state.
// Either way the reverse map p2 -> p1 is a table lookup: the stack-to-TUN
// direction never needs a flow to find p1.
#pragma once

#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

#include "vpm/config.hpp"

namespace vpm {

inline constexpr uint16_t kNoApp = 0xffff;

struct Listen {
  IpAddr vaddr;
  uint16_t p1 = 0;
  Proto proto = Proto::tcp;
  uint32_t vaddr_index = 0;
  // per-app: p2 of each app index (0 where that app does not listen here).
  std::vector<uint16_t> p2_of_app;
  // per-connection: this listen's slice of the hidden range.
  uint16_t slice_lo = 0, slice_hi = 0;
  uint16_t fallback_app = kNoApp;  // vpm.unmatched, if that app listens here
  // Cooperative mode: a cooperative app listens here, so p1 itself is
  // where VPMs negotiate (for every client no plain app takes); this is
  // the first such app, for counters.
  uint16_t negotiator_app = kNoApp;

  struct PrefixRule {
    Prefix prefix;
    uint16_t app;
  };
  struct PairRule {
    Endpoint pair;
    uint16_t app;
  };
  std::vector<PrefixRule> prefixes;  // longest first
  std::vector<PairRule> pairs;
};

struct VirtualAddr {
  IpAddr addr;
  // p1 owning each hidden port, per protocol (index: port - range_lo; 0 = none).
  std::vector<uint16_t> p1_of_p2[2];
  std::vector<uint32_t> listens;      // indices into Ruleset::listens, sorted by (p1, proto)
  std::vector<uint32_t> listen_keys;  // p1 << 8 | proto of each of `listens`, scanned per packet
  std::unordered_map<uint16_t, uint16_t> coop_app_of_p2;  // TCP p2 of a cooperative app -> app
};

struct IpAddrHash {
  size_t operator()(const IpAddr& a) const;
};

class Ruleset {
 public:
  static constexpr size_t kLinearVaddrs = 8;

  // `cfg` must have come back from parse_config (it has been validated), or
  // from merge_reload. With `previous` (the rules a reload replaces), every
  // (vaddr, p1, AID) both have keeps its p2.
  explicit Ruleset(const Config& cfg, const Ruleset* previous = nullptr);

  const Config& config() const { return cfg_; }
  const std::vector<Listen>& listens() const { return listens_; }
  const std::vector<VirtualAddr>& vaddrs() const { return vaddrs_; }

  // Index of a virtual address, or -1. Most setups have a handful of
  // virtual addresses: a linear scan of 16-byte keys beats hashing them.
  int find_vaddr(const IpAddr& a) const {
    if (vaddr_addrs_.size() <= kLinearVaddrs) {
      for (size_t i = 0; i < vaddr_addrs_.size(); ++i)
        if (vaddr_addrs_[i] == a) return static_cast<int>(i);
      return -1;
    }
    auto it = vaddr_index_.find(a);
    return it == vaddr_index_.end() ? -1 : static_cast<int>(it->second);
  }
  const Listen* find_listen(int vaddr, uint16_t p1, Proto proto) const {
    const VirtualAddr& v = vaddrs_[static_cast<size_t>(vaddr)];
    uint32_t key = uint32_t{p1} << 8 | static_cast<uint8_t>(proto);
    for (size_t i = 0; i < v.listen_keys.size(); ++i)
      if (v.listen_keys[i] == key) return &listens_[v.listens[i]];
    return nullptr;
  }
  bool hidden(uint16_t port) const { return port >= lo_ && port <= hi_; }
  // p1 that owns hidden port p2 on this vaddr, or 0.
  uint16_t p1_of(int vaddr, Proto proto, uint16_t p2) const {
    return vaddrs_[static_cast<size_t>(vaddr)].p1_of_p2[proto == Proto::udp][p2 - lo_];
  }
  // The app a client belongs to on this listen, or kNoApp (refuse).
  uint16_t classify(const Listen& l, const IpAddr& client, uint16_t port) const;

  // Cooperative mode: whether any app is cooperative, and the cooperative
  // app whose (TCP) p2 this is on this vaddr, or kNoApp.
  bool cooperative() const { return cooperative_; }
  uint16_t coop_app(int vaddr, uint16_t p2) const {
    const auto& m = vaddrs_[static_cast<size_t>(vaddr)].coop_app_of_p2;
    auto it = m.find(p2);
    return it == m.end() ? kNoApp : it->second;
  }

 private:
  std::map<std::pair<uint16_t, uint32_t>, uint16_t> p2s_on(const IpAddr& addr) const;

  Config cfg_;
  uint16_t lo_, hi_;
  bool cooperative_ = false;
  std::vector<Listen> listens_;
  std::vector<VirtualAddr> vaddrs_;
  std::vector<IpAddr> vaddr_addrs_;  // the same addresses, packed for the per-packet scan
  std::unordered_map<IpAddr, uint32_t, IpAddrHash> vaddr_index_;
};

}  // namespace vpm
