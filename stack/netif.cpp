// The lwIP netifs of the virtual addresses: packets into lwIP and out of it.
#include <netinet/in.h>

#include <set>

#include "lwip/pbuf.h"
#include "stack_impl.hpp"

namespace stack {

namespace {

err_t netif_out(netif* nif, pbuf* p) { return static_cast<Stack::Impl*>(nif->state)->emit(p); }
err_t netif_out4(netif* nif, pbuf* p, const ip4_addr_t*) { return netif_out(nif, p); }
err_t netif_out6(netif* nif, pbuf* p, const ip6_addr_t*) { return netif_out(nif, p); }

err_t netif_setup(netif* nif) {
  nif->output = netif_out4;
  nif->output_ip6 = netif_out6;
  nif->name[0] = 'v';
  nif->name[1] = 'p';
  return ERR_OK;
}

}  // namespace

err_t Stack::Impl::emit(pbuf* p) {
  if (silent) return ERR_OK;
  out.resize(p->tot_len);
  pbuf_copy_partial(p, out.data(), p->tot_len, 0);
  ++counters.packets_out;
  sink({out.data(), out.size()});
  return ERR_OK;
}

// Packets enter through the default netif, whose flags say what lwIP checks.
void Stack::Impl::deliver(std::span<const uint8_t> packet, bool verified) {
  netif* first = netif_default;
  constexpr u16_t kTrusted =
      NETIF_CHECKSUM_ENABLE_ALL & ~(NETIF_CHECKSUM_CHECK_TCP | NETIF_CHECKSUM_CHECK_UDP);
  NETIF_SET_CHECKSUM_CTRL(first, verified ? kTrusted : NETIF_CHECKSUM_ENABLE_ALL);
  pbuf* p = pbuf_alloc(PBUF_RAW, static_cast<u16_t>(packet.size()), PBUF_RAM);
  if (!p) {
    ++counters.input_errors;
    return;
  }
  pbuf_take(p, packet.data(), static_cast<u16_t>(packet.size()));
  if (first->input(p, first) != ERR_OK) {
    pbuf_free(p);
    ++counters.input_errors;
  }
}

// A datagram from an endpoint to its client. It leaves through the netif of
// the endpoint's own address: lwIP's udp_sendto() would route it through
// the default netif and, finding the pcb's address is not that netif's,
// drop it (ERR_RTE).
void Stack::Impl::udp_reply(Endpoint* ep, pbuf* p, const ip_addr_t* client, u16_t port) {
  auto nif = netifs.find(ep->vaddr);
  if (nif == netifs.end() || udp_sendto_if(ep->udp, p, client, port, nif->second.get()) != ERR_OK)
    ++counters.udp_send_errors;
}

void Stack::Impl::sync_netifs() {
  std::set<vpm::IpAddr> wanted;
  for (const auto& v : rules.vaddrs()) wanted.insert(v.addr);
  std::erase_if(netifs, [&](auto& held) {
    if (wanted.count(held.first)) return false;
    netif_remove(held.second.get());  // nothing listens there any more
    return true;
  });
  for (const auto& addr : wanted) {
    if (netifs.count(addr)) continue;
    auto nif = std::make_unique<netif>();
    ip_addr_t a = to_lwip(addr);
    if (addr.is_v4()) {
      ip4_addr_t mask, gw;
      IP4_ADDR(&mask, 255, 255, 255, 255);
      ip4_addr_set_zero(&gw);
      netif_add(nif.get(), ip_2_ip4(&a), &mask, &gw, this, netif_setup, ip_input);
    } else {
      netif_add_noaddr(nif.get(), this, netif_setup, ip_input);
      netif_ip6_addr_set(nif.get(), 0, ip_2_ip6(&a));
      netif_ip6_addr_set_state(nif.get(), 0, IP6_ADDR_PREFERRED);
    }
    nif->mtu = mtu;
    netif_set_link_up(nif.get());
    netif_set_up(nif.get());
    netifs[addr] = std::move(nif);
  }
  // Replies to clients leave through the default netif; any one will do.
  netif_set_default(netifs.empty() ? nullptr : netifs.begin()->second.get());
}

}  // namespace stack
