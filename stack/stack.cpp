// lwIP netifs for the virtual addresses, and the built-in endpoints.
#include "stack/stack.hpp"

#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "lwip/init.h"
#include "lwip/ip.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/timeouts.h"
#include "lwip/udp.h"
#include "stack_internal.hpp"

namespace stack {

namespace {

enum class Service { echo, discard, http_info };

constexpr size_t kMaxRequest = 16 * 1024;  // http-info reads at most this much of a request

ip_addr_t to_lwip(const vpm::IpAddr& a) {
  ip_addr_t out;
  if (a.is_v4()) {
    IP_ADDR4(&out, a.bytes[12], a.bytes[13], a.bytes[14], a.bytes[15]);
  } else {
    IP_SET_TYPE_VAL(out, IPADDR_TYPE_V6);
    std::memcpy(ip_2_ip6(&out)->addr, a.bytes.data(), 16);
    ip6_addr_clear_zone(ip_2_ip6(&out));
  }
  return out;
}

// Formatted as the rest of vpmtun formats endpoints (RFC 5952 for IPv6).
std::string endpoint_text(const ip_addr_t* addr, uint16_t port) {
  vpm::IpAddr a = IP_IS_V6(addr)
                      ? vpm::IpAddr::v6(reinterpret_cast<const uint8_t*>(ip_2_ip6(addr)->addr))
                      : vpm::IpAddr::v4(reinterpret_cast<const uint8_t*>(&ip_2_ip4(addr)->addr));
  return vpm::Endpoint{a, port}.str();
}

// One bound (virtual address, p2, protocol) and the apps that share it.
struct Endpoint {
  Stack::Impl* stack = nullptr;
  vpm::IpAddr vaddr;
  uint16_t p1 = 0, p2 = 0;
  vpm::Proto proto = vpm::Proto::tcp;
  std::vector<uint16_t> apps;
  size_t turn = 0;  // next app to take a connection
  tcp_pcb* listener = nullptr;
  udp_pcb* udp = nullptr;
};

// One accepted TCP connection.
struct Conn {
  Stack::Impl* stack = nullptr;
  Endpoint* ep = nullptr;
  uint16_t app = 0;
  Service service = Service::discard;
  tcp_pcb* pcb = nullptr;
  pbuf* pending = nullptr;  // echo: read, not yet queued back
  std::string request;      // http-info
  bool fin_seen = false;
  bool answered = false;
};

}  // namespace

struct Stack::Impl {
  const vpm::Ruleset& rules;
  PacketSink sink;
  StackCounters counters;
  std::vector<std::unique_ptr<netif>> netifs;
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  std::unordered_set<Conn*> conns;
  std::vector<uint8_t> out;

  Impl(const vpm::Ruleset& r, PacketSink s) : rules(r), sink(std::move(s)) {}

  Service service_of(uint16_t app) const {
    const auto& a = rules.config().apps[app];
    if (a.serve == "echo") return Service::echo;
    if (a.serve == "http-info") return Service::http_info;
    return Service::discard;
  }

  std::string info_json(const Endpoint& ep, uint16_t app, const ip_addr_t* client, uint16_t port,
                        const char* proto) const {
    const auto& a = rules.config().apps[app];
    return fmt::format(
        "{{\"app\":\"{}\",\"aid\":{},\"p1\":{},\"p2\":{},\"client\":\"{}\",\"protocol\":\"{}\"}}\n",
        a.name, a.aid, ep.p1, ep.p2, endpoint_text(client, port), proto);
  }

  err_t emit(pbuf* p) {
    out.resize(p->tot_len);
    pbuf_copy_partial(p, out.data(), p->tot_len, 0);
    ++counters.packets_out;
    sink({out.data(), out.size()});
    return ERR_OK;
  }

  void forget(Conn* c) {
    if (c->pending) pbuf_free(c->pending);
    conns.erase(c);
    ++counters.tcp_closed;
    delete c;
  }

  // Closes our side once everything queued has been handed to lwIP.
  void close(Conn* c) {
    tcp_arg(c->pcb, nullptr);
    tcp_recv(c->pcb, nullptr);
    tcp_sent(c->pcb, nullptr);
    tcp_err(c->pcb, nullptr);
    if (tcp_close(c->pcb) != ERR_OK) tcp_abort(c->pcb);
    forget(c);
  }

  // Echo: queue back what was read, as far as the send buffer allows, and
  // acknowledge only that much (the client's window is our back-pressure).
  void pump(Conn* c) {
    while (c->pending && tcp_sndbuf(c->pcb) > 0) {
      u16_t n = std::min<u16_t>(c->pending->len, tcp_sndbuf(c->pcb));
      if (tcp_write(c->pcb, c->pending->payload, n, TCP_WRITE_FLAG_COPY) != ERR_OK) break;
      tcp_recved(c->pcb, n);
      c->pending = pbuf_free_header(c->pending, n);
    }
    tcp_output(c->pcb);
    if (!c->pending && c->fin_seen) close(c);
  }
};

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

err_t on_tcp_recv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err) {
  auto* c = static_cast<Conn*>(arg);
  if (!c) {
    if (p) pbuf_free(p);
    return ERR_OK;
  }
  auto* s = c->stack;
  if (!p || err != ERR_OK) {  // the client closed its side
    c->fin_seen = true;
    if (p) pbuf_free(p);
    if (c->service == Service::echo)
      s->pump(c);
    else
      s->close(c);
    return ERR_OK;
  }
  switch (c->service) {
    case Service::echo:
      if (c->pending)
        pbuf_cat(c->pending, p);
      else
        c->pending = p;
      s->pump(c);
      return ERR_OK;
    case Service::discard:
      tcp_recved(pcb, p->tot_len);
      pbuf_free(p);
      return ERR_OK;
    case Service::http_info: {
      size_t room = kMaxRequest - std::min(kMaxRequest, c->request.size());
      size_t take = std::min<size_t>(room, p->tot_len);
      size_t at = c->request.size();
      c->request.resize(at + take);
      pbuf_copy_partial(p, c->request.data() + at, static_cast<u16_t>(take), 0);
      tcp_recved(pcb, p->tot_len);
      pbuf_free(p);
      bool complete = c->request.find("\r\n\r\n") != std::string::npos || room == take;
      if (complete && !c->answered) {
        c->answered = true;
        std::string body = s->info_json(*c->ep, c->app, &pcb->remote_ip, pcb->remote_port, "tcp");
        std::string reply = fmt::format(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
            "Connection: close\r\n\r\n{}",
            body.size(), body);
        tcp_write(pcb, reply.data(), static_cast<u16_t>(reply.size()), TCP_WRITE_FLAG_COPY);
        s->close(c);  // FIN follows the reply
      }
      return ERR_OK;
    }
  }
  return ERR_OK;
}

err_t on_tcp_sent(void* arg, tcp_pcb*, u16_t) {
  auto* c = static_cast<Conn*>(arg);
  if (c && c->service == Service::echo) c->stack->pump(c);
  return ERR_OK;
}

void on_tcp_err(void* arg, err_t) {
  // lwIP has freed the pcb already (reset, or aborted).
  if (auto* c = static_cast<Conn*>(arg)) c->stack->forget(c);
}

err_t on_tcp_accept(void* arg, tcp_pcb* pcb, err_t err) {
  auto* ep = static_cast<Endpoint*>(arg);
  if (err != ERR_OK || !pcb) return ERR_VAL;
  auto* s = ep->stack;
  auto* c = new Conn;
  c->stack = s;
  c->ep = ep;
  c->app = ep->apps[ep->turn++ % ep->apps.size()];
  c->service = s->service_of(c->app);
  c->pcb = pcb;
  s->conns.insert(c);
  ++s->counters.tcp_accepted;
  tcp_arg(pcb, c);
  tcp_recv(pcb, on_tcp_recv);
  tcp_sent(pcb, on_tcp_sent);
  tcp_err(pcb, on_tcp_err);
  tcp_nagle_disable(pcb);
  return ERR_OK;
}

void on_udp_recv(void* arg, udp_pcb* pcb, pbuf* p, const ip_addr_t* addr, u16_t port) {
  auto* ep = static_cast<Endpoint*>(arg);
  auto* s = ep->stack;
  ++s->counters.udp_datagrams;
  uint16_t app = ep->apps[ep->turn++ % ep->apps.size()];
  switch (s->service_of(app)) {
    case Service::echo:
      udp_sendto(pcb, p, addr, port);
      break;
    case Service::discard:
      break;
    case Service::http_info: {
      std::string body = s->info_json(*ep, app, addr, port, "udp");
      pbuf* reply = pbuf_alloc(PBUF_TRANSPORT, static_cast<u16_t>(body.size()), PBUF_RAM);
      if (reply) {
        pbuf_take(reply, body.data(), static_cast<u16_t>(body.size()));
        udp_sendto(pcb, reply, addr, port);
        pbuf_free(reply);
      }
      break;
    }
  }
  pbuf_free(p);
}

}  // namespace

Stack::Stack(const vpm::Ruleset& rules, uint32_t mtu, PacketSink sink)
    : impl_(std::make_unique<Impl>(rules, std::move(sink))) {
  static bool initialised = false;
  if (!initialised) {
    lwip_init();
    initialised = true;
  }
  const auto& cfg = rules.config();
  if (cfg.vpm.allocation == vpm::Allocation::per_connection)
    throw std::runtime_error(
        "the daemon serves allocation = \"per-app\" only so far (per-connection works in replay)");
  for (const auto& app : cfg.apps)
    if (app.forward)
      throw std::runtime_error("app '" + app.name +
                               "': forward endpoints are not implemented in the daemon yet; "
                               "use serve = \"echo\", \"discard\" or \"http-info\"");

  // A netif per virtual address; the first is the default route for replies.
  for (const auto& v : rules.vaddrs()) {
    auto nif = std::make_unique<netif>();
    ip_addr_t a = to_lwip(v.addr);
    if (v.addr.is_v4()) {
      ip4_addr_t mask, gw;
      IP4_ADDR(&mask, 255, 255, 255, 255);
      ip4_addr_set_zero(&gw);
      netif_add(nif.get(), ip_2_ip4(&a), &mask, &gw, impl_.get(), netif_setup, ip_input);
    } else {
      netif_add_noaddr(nif.get(), impl_.get(), netif_setup, ip_input);
      netif_ip6_addr_set(nif.get(), 0, ip_2_ip6(&a));
      netif_ip6_addr_set_state(nif.get(), 0, IP6_ADDR_PREFERRED);
    }
    nif->mtu = static_cast<u16_t>(std::min<uint32_t>(mtu, 65535));
    netif_set_link_up(nif.get());
    netif_set_up(nif.get());
    if (impl_->netifs.empty()) netif_set_default(nif.get());
    impl_->netifs.push_back(std::move(nif));
  }

  // One endpoint per (vaddr, p2, protocol), shared by the apps of one AID.
  std::map<std::tuple<vpm::IpAddr, uint16_t, vpm::Proto>, Endpoint*> bound;
  for (const auto& l : rules.listens()) {
    for (size_t a = 0; a < l.p2_of_app.size(); ++a) {
      uint16_t p2 = l.p2_of_app[a];
      if (p2 == 0) continue;
      auto& slot = bound[{l.vaddr, p2, l.proto}];
      if (!slot) {
        auto ep = std::make_unique<Endpoint>();
        ep->stack = impl_.get();
        ep->vaddr = l.vaddr;
        ep->p1 = l.p1;
        ep->p2 = p2;
        ep->proto = l.proto;
        ip_addr_t addr = to_lwip(l.vaddr);
        if (l.proto == vpm::Proto::tcp) {
          tcp_pcb* pcb = tcp_new_ip_type(IP_GET_TYPE(&addr));
          if (!pcb || tcp_bind(pcb, &addr, p2) != ERR_OK)
            throw std::runtime_error(
                fmt::format("cannot bind {} in the stack", vpm::Endpoint{l.vaddr, p2}.str()));
          ep->listener = tcp_listen_with_backlog(pcb, TCP_DEFAULT_LISTEN_BACKLOG);
          tcp_arg(ep->listener, ep.get());
          tcp_accept(ep->listener, on_tcp_accept);
        } else {
          ep->udp = udp_new_ip_type(IP_GET_TYPE(&addr));
          if (!ep->udp || udp_bind(ep->udp, &addr, p2) != ERR_OK)
            throw std::runtime_error(
                fmt::format("cannot bind {}/udp in the stack", vpm::Endpoint{l.vaddr, p2}.str()));
          udp_recv(ep->udp, on_udp_recv, ep.get());
        }
        slot = ep.get();
        impl_->endpoints.push_back(std::move(ep));
      }
      slot->apps.push_back(static_cast<uint16_t>(a));
    }
  }
}

Stack::~Stack() {
  std::vector<Conn*> open(impl_->conns.begin(), impl_->conns.end());
  for (Conn* c : open) tcp_abort(c->pcb);  // calls on_tcp_err, which frees c
  for (auto& ep : impl_->endpoints) {
    if (ep->listener) tcp_close(ep->listener);
    if (ep->udp) udp_remove(ep->udp);
  }
  for (auto& nif : impl_->netifs) netif_remove(nif.get());
}

void Stack::input(std::span<const uint8_t> packet) {
  ++impl_->counters.packets_in;
  if (packet.empty() || packet.size() > 65535 || impl_->netifs.empty()) {
    ++impl_->counters.input_errors;
    return;
  }
  pbuf* p = pbuf_alloc(PBUF_RAW, static_cast<u16_t>(packet.size()), PBUF_RAM);
  if (!p) {
    ++impl_->counters.input_errors;
    return;
  }
  pbuf_take(p, packet.data(), static_cast<u16_t>(packet.size()));
  netif* first = impl_->netifs.front().get();
  if (first->input(p, first) != ERR_OK) {
    pbuf_free(p);
    ++impl_->counters.input_errors;
  }
}

void Stack::poll() { sys_check_timeouts(); }

const StackCounters& Stack::counters() const {
  impl_->counters.lwip_asserts = lwip_assert_count();
  return impl_->counters;
}

}  // namespace stack
