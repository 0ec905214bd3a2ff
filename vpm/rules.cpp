// Compiling the configuration into listens, client rules and p2 assignments.
#include "vpm/rules.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace vpm {

size_t IpAddrHash::operator()(const IpAddr& a) const {
  uint64_t hi, lo;
  std::memcpy(&hi, a.bytes.data(), 8);
  std::memcpy(&lo, a.bytes.data() + 8, 8);
  uint64_t h = (hi * 0x9e3779b97f4a7c15ull) ^ (lo + 0x632be59bd9b4e019ull);
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return static_cast<size_t>(h ^ (h >> 32));
}

namespace {

// Preferred slot of (p1, AID) in a range of `size` ports (splitmix64 finaliser).
size_t preferred_slot(uint16_t p1, uint32_t aid, size_t size) {
  uint64_t x = (uint64_t{p1} << 32 | aid) + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<size_t>(x % size);
}

}  // namespace

// The p2 of each (p1, AID) on virtual address `addr` (per-app allocation).
std::map<std::pair<uint16_t, uint32_t>, uint16_t> Ruleset::p2s_on(const IpAddr& addr) const {
  std::map<std::pair<uint16_t, uint32_t>, uint16_t> out;
  int v = find_vaddr(addr);
  if (v < 0) return out;
  for (uint32_t li : vaddrs_[static_cast<size_t>(v)].listens) {
    const Listen& l = listens_[li];
    for (size_t a = 0; a < l.p2_of_app.size(); ++a)
      if (l.p2_of_app[a]) out[{l.p1, cfg_.apps[a].aid}] = l.p2_of_app[a];
  }
  return out;
}

Ruleset::Ruleset(const Config& cfg, const Ruleset* previous)
    : cfg_(cfg), lo_(cfg.vpm.range_lo), hi_(cfg.vpm.range_hi) {
  const size_t range = size_t{hi_} - lo_ + 1;

  // Listens in a canonical order so indices do not depend on app order.
  std::map<std::tuple<IpAddr, uint16_t, Proto>, std::vector<uint16_t>> apps_of;
  for (size_t a = 0; a < cfg.apps.size(); ++a)
    for (auto& l : cfg.apps[a].listen)
      apps_of[{l.at.addr, l.at.port, l.proto}].push_back(static_cast<uint16_t>(a));

  uint16_t fallback = kNoApp;
  for (size_t a = 0; a < cfg.apps.size(); ++a)
    if (cfg.apps[a].name == cfg.vpm.unmatched && !cfg.apps[a].draining)
      fallback = static_cast<uint16_t>(a);

  for (auto& [key, apps] : apps_of) {
    auto& [addr, p1, proto] = key;
    auto [it, fresh] = vaddr_index_.emplace(addr, static_cast<uint32_t>(vaddrs_.size()));
    if (fresh) {
      VirtualAddr v;
      v.addr = addr;
      v.p1_of_p2[0].assign(range, 0);
      v.p1_of_p2[1].assign(range, 0);
      vaddrs_.push_back(std::move(v));
      vaddr_addrs_.push_back(addr);
    }
    Listen l;
    l.vaddr = addr;
    l.p1 = p1;
    l.proto = proto;
    l.vaddr_index = it->second;
    l.p2_of_app.assign(cfg.apps.size(), 0);
    for (uint16_t a : apps) {
      if (a == fallback) l.fallback_app = a;
      if (cfg.apps[a].cooperative && l.negotiator_app == kNoApp) l.negotiator_app = a;
      if (cfg.apps[a].draining) continue;  // it keeps its flows, and gets no new ones
      for (auto& r : cfg.apps[a].clients) {
        if (r.exact)
          l.pairs.push_back({r.pair, a});
        else
          l.prefixes.push_back({r.prefix, a});
      }
    }
    std::stable_sort(l.prefixes.begin(), l.prefixes.end(),
                     [](auto& x, auto& y) { return x.prefix.len > y.prefix.len; });
    vaddrs_[it->second].listens.push_back(static_cast<uint32_t>(listens_.size()));
    vaddrs_[it->second].listen_keys.push_back(uint32_t{p1} << 8 | static_cast<uint8_t>(proto));
    listens_.push_back(std::move(l));
  }

  for (auto& v : vaddrs_) {
    if (cfg.vpm.allocation == Allocation::per_app) {
      // One p2 per (p1, AID) on this vaddr, shared by TCP and UDP. After a
      // reload, keys the previous rules had keep their p2; new keys probe
      // around them.
      std::map<std::pair<uint16_t, uint32_t>, uint16_t> p2_of;
      std::vector<bool> taken(range, false);
      std::set<std::pair<uint16_t, uint32_t>> keys;
      for (uint32_t li : v.listens) {
        const Listen& l = listens_[li];
        for (uint16_t a : apps_of[{l.vaddr, l.p1, l.proto}]) keys.insert({l.p1, cfg.apps[a].aid});
      }
      if (previous && previous->lo_ == lo_ && previous->hi_ == hi_)
        for (auto& [k, p2] : previous->p2s_on(v.addr))
          if (keys.count(k)) {
            p2_of[k] = p2;
            taken[p2 - lo_] = true;
          }
      for (auto& k : keys) {
        if (p2_of.count(k)) continue;
        size_t slot = preferred_slot(k.first, k.second, range);
        while (taken[slot]) slot = (slot + 1) % range;
        taken[slot] = true;
        p2_of[k] = static_cast<uint16_t>(lo_ + slot);
      }
      for (uint32_t li : v.listens) {
        Listen& l = listens_[li];
        for (uint16_t a : apps_of[{l.vaddr, l.p1, l.proto}]) {
          uint16_t p2 = p2_of[{l.p1, cfg.apps[a].aid}];
          l.p2_of_app[a] = p2;
          v.p1_of_p2[l.proto == Proto::udp][p2 - lo_] = l.p1;
          if (cfg.apps[a].cooperative && l.proto == Proto::tcp) {
            v.coop_app_of_p2.emplace(p2, a);
            cooperative_ = true;
          }
        }
      }
    } else {
      // Equal slices of the range, one per distinct p1, in ascending p1 order.
      std::set<uint16_t> p1s;
      for (uint32_t li : v.listens) p1s.insert(listens_[li].p1);
      size_t width = range / p1s.size();
      size_t i = 0;
      for (uint16_t p1 : p1s) {
        auto slo = static_cast<uint16_t>(lo_ + i * width);
        auto shi = static_cast<uint16_t>(i + 1 == p1s.size() ? hi_ : lo_ + (i + 1) * width - 1);
        for (uint32_t li : v.listens) {
          Listen& l = listens_[li];
          if (l.p1 != p1) continue;
          l.slice_lo = slo;
          l.slice_hi = shi;
          for (size_t p = slo; p <= shi; ++p) v.p1_of_p2[l.proto == Proto::udp][p - lo_] = p1;
        }
        ++i;
      }
    }
  }
}

uint16_t Ruleset::classify(const Listen& l, const IpAddr& client, uint16_t port) const {
  for (auto& r : l.pairs)
    if (r.pair.addr == client && r.pair.port == port) return r.app;
  for (auto& r : l.prefixes)
    if (r.prefix.contains(client)) return r.app;
  return l.fallback_app;
}

}  // namespace vpm
