// The indexes of lwIP's active and TIME-WAIT TCP pcbs: a hash of each pcb's
// 4-tuple, and each pcb's predecessor in lwIP's singly linked list.
//
// lwIP 2.1 finds the pcb of every incoming segment by walking its list of
// active pcbs, then its list of TIME-WAIT pcbs, and unlinks a pcb by
// walking to its predecessor; with many connections open (or closed in the
// last TCP_MSL) each costs O(n) per packet. Our patches to lwIP
// (stack/patches/0001-tcp-active-pcb-index.patch, 0002-tcp-time-wait-index)
// call these hooks where a pcb joins a list (always at its head), leaves
// it, or is looked up.
// Invariants, per list: `by_tuple` holds exactly the pcbs on it, and
// `prev[p]` is the pcb before p on it (nullptr for the head). A pcb's
// addresses and ports never change while it is on either list.
#include <array>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "lwip/priv/tcp_priv.h"
#include "lwip/tcp.h"
#include "vpmtun_hooks.h"

namespace {

using Key = std::array<uint8_t, 37>;  // remote ip, local ip, ports, family

Key key_of(const ip_addr_t* remote, u16_t rport, const ip_addr_t* local, u16_t lport) {
  Key k{};
  auto put = [&](size_t at, const ip_addr_t* a) {
    if (IP_IS_V6(a))
      std::memcpy(&k[at], ip_2_ip6(a)->addr, 16);
    else
      std::memcpy(&k[at], &ip_2_ip4(a)->addr, 4);
  };
  put(0, remote);
  put(16, local);
  std::memcpy(&k[32], &rport, 2);
  std::memcpy(&k[34], &lport, 2);
  k[36] = IP_IS_V6(remote) ? 6 : 4;
  return k;
}

struct KeyHash {
  size_t operator()(const Key& k) const {
    return std::hash<std::string_view>{}({reinterpret_cast<const char*>(k.data()), k.size()});
  }
};

struct Index {
  tcp_pcb** head;
  std::unordered_map<Key, tcp_pcb*, KeyHash> by_tuple;
  std::unordered_map<tcp_pcb*, tcp_pcb*> prev;
};

Index& active() {
  static Index i{&tcp_active_pcbs, {}, {}};
  return i;
}

Index& time_wait() {
  static Index i{&tcp_tw_pcbs, {}, {}};
  return i;
}

void added(Index& i, tcp_pcb* pcb) {
  i.prev[pcb] = nullptr;
  if (pcb->next) i.prev[pcb->next] = pcb;
  i.by_tuple[key_of(&pcb->remote_ip, pcb->remote_port, &pcb->local_ip, pcb->local_port)] = pcb;
}

// Leaves pcb->next as it was: lwIP's slow timer walks on from it.
void unlink(Index& i, tcp_pcb* pcb) {
  auto at = i.prev.find(pcb);
  if (at == i.prev.end()) return;  // not on the list
  tcp_pcb* before = at->second;
  if (before)
    before->next = pcb->next;
  else
    *i.head = pcb->next;
  if (pcb->next) i.prev[pcb->next] = before;
  i.prev.erase(at);
  auto found =
      i.by_tuple.find(key_of(&pcb->remote_ip, pcb->remote_port, &pcb->local_ip, pcb->local_port));
  if (found != i.by_tuple.end() && found->second == pcb) i.by_tuple.erase(found);
}

tcp_pcb* find(const Index& i, const ip_addr_t* remote_ip, u16_t remote_port,
              const ip_addr_t* local_ip, u16_t local_port) {
  auto found = i.by_tuple.find(key_of(remote_ip, remote_port, local_ip, local_port));
  return found == i.by_tuple.end() ? nullptr : found->second;
}

}  // namespace

extern "C" {

void vpmtun_tcp_active_added(tcp_pcb* pcb) { added(active(), pcb); }
void vpmtun_tcp_active_unlink(tcp_pcb* pcb) { unlink(active(), pcb); }
tcp_pcb* vpmtun_tcp_active_find(const ip_addr_t* remote_ip, u16_t remote_port,
                                const ip_addr_t* local_ip, u16_t local_port) {
  return find(active(), remote_ip, remote_port, local_ip, local_port);
}

void vpmtun_tcp_tw_added(tcp_pcb* pcb) { added(time_wait(), pcb); }
void vpmtun_tcp_tw_unlink(tcp_pcb* pcb) { unlink(time_wait(), pcb); }
tcp_pcb* vpmtun_tcp_tw_find(const ip_addr_t* remote_ip, u16_t remote_port,
                            const ip_addr_t* local_ip, u16_t local_port) {
  return find(time_wait(), remote_ip, remote_port, local_ip, local_port);
}
size_t vpmtun_tcp_tw_count(void) { return time_wait().prev.size(); }
}
