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
//
// The predecessor lives in the pcb itself, in the ext_args slot lwIP keeps
// for such uses (LWIP_TCP_PCB_NUM_EXT_ARGS): the pointer, with bit 0 set
// while the pcb is on a list and bit 1 saying which. A pcb's slot is zero
// from tcp_alloc() until it first joins a list.
// Invariants, per list: `by_tuple` holds exactly the pcbs on it, and a
// listed pcb's slot names the pcb before it on it (nullptr for the head). A
// pcb's addresses and ports never change while it is on either list.
#include <cstdint>
#include <cstring>
#include <unordered_map>

#include "lwip/priv/tcp_priv.h"
#include "lwip/tcp.h"
#include "vpmtun_hooks.h"

namespace {

// Remote address, local address, then both ports and the family in one word.
struct Key {
  uint64_t w[5] = {};
  bool operator==(const Key& o) const {
    return ((w[0] ^ o.w[0]) | (w[1] ^ o.w[1]) | (w[2] ^ o.w[2]) | (w[3] ^ o.w[3]) |
            (w[4] ^ o.w[4])) == 0;
  }
};

Key key_of(const ip_addr_t* remote, u16_t rport, const ip_addr_t* local, u16_t lport) {
  Key k;
  auto put = [&](uint64_t* at, const ip_addr_t* a) {
    if (IP_IS_V6(a))
      std::memcpy(at, ip_2_ip6(a)->addr, 16);
    else
      std::memcpy(at, &ip_2_ip4(a)->addr, 4);
  };
  put(&k.w[0], remote);
  put(&k.w[2], local);
  k.w[4] = uint64_t{rport} | uint64_t{lport} << 16 | uint64_t{IP_IS_V6(remote) ? 6u : 4u} << 32;
  return k;
}

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = (k.w[0] * 0x9e3779b97f4a7c15ull) ^ (k.w[1] * 0xc2b2ae3d27d4eb4full) ^
                 (k.w[2] * 0x165667b19e3779f9ull) ^ (k.w[3] * 0xd6e8feb86659fd93ull) ^
                 (k.w[4] * 0xff51afd7ed558ccdull);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
  }
};

constexpr uintptr_t kListed = 1, kTimeWait = 2, kTagBits = 3;
static_assert(MEM_ALIGNMENT >= 4, "the tag bits need pcbs aligned to 4");

u8_t slot() {
  static const u8_t id = tcp_ext_arg_alloc_id();
  return id;
}

struct Index {
  tcp_pcb** head;
  uintptr_t tag;  // kListed, and kTimeWait for that list
  std::unordered_map<Key, tcp_pcb*, KeyHash> by_tuple;
  size_t size = 0;

  bool holds(const tcp_pcb* pcb) const {
    return (reinterpret_cast<uintptr_t>(pcb->ext_args[slot()].data) & kTagBits) == tag;
  }
  void set_prev(tcp_pcb* pcb, tcp_pcb* before) const {
    pcb->ext_args[slot()].data = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(before) | tag);
  }
  static tcp_pcb* prev_of(const tcp_pcb* pcb) {
    return reinterpret_cast<tcp_pcb*>(reinterpret_cast<uintptr_t>(pcb->ext_args[slot()].data) &
                                      ~kTagBits);
  }
};

Index& active() {
  static Index i{&tcp_active_pcbs, kListed, {}};
  return i;
}

Index& time_wait() {
  static Index i{&tcp_tw_pcbs, kListed | kTimeWait, {}};
  return i;
}

void added(Index& i, tcp_pcb* pcb) {
  i.set_prev(pcb, nullptr);
  if (pcb->next) i.set_prev(pcb->next, pcb);
  i.by_tuple[key_of(&pcb->remote_ip, pcb->remote_port, &pcb->local_ip, pcb->local_port)] = pcb;
  ++i.size;
}

// Leaves pcb->next as it was: lwIP's slow timer walks on from it.
void unlink(Index& i, tcp_pcb* pcb) {
  if (!i.holds(pcb)) return;  // not on this list
  tcp_pcb* before = Index::prev_of(pcb);
  if (before)
    before->next = pcb->next;
  else
    *i.head = pcb->next;
  if (pcb->next) i.set_prev(pcb->next, before);
  pcb->ext_args[slot()].data = nullptr;
  --i.size;
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
size_t vpmtun_tcp_tw_count(void) { return time_wait().size; }
}
