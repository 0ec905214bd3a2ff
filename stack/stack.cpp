// The Stack: its public face, and the endpoints bound in lwIP.
#include <fmt/core.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <set>
#include <stdexcept>

#include "lwip/init.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/timeouts.h"
#include "stack_impl.hpp"
#include "stack_internal.hpp"

namespace stack {

namespace {

err_t on_tcp_accept(void* arg, tcp_pcb* pcb, err_t err) {
  auto* ep = static_cast<Endpoint*>(arg);
  if (err != ERR_OK || !pcb) return ERR_VAL;
  auto* s = ep->stack;
  // arrive() chose the app when the SYN came (and made a forward app's
  // backend connection then).
  Tuple key = make_tuple(from_lwip(&pcb->remote_ip), pcb->remote_port, ep->vaddr, ep->p2);
  auto held = s->admitted.find(key);
  if (held == s->admitted.end()) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  auto* c = new Conn;
  c->stack = s;
  c->p1 = ep->p1;
  c->p2 = ep->p2;
  c->pcb = pcb;
  c->app = held->second.app;
  c->sock = held->second.sock;
  c->backend_hung_up = held->second.events & (EPOLLRDHUP | EPOLLHUP);
  c->service = s->service_at(ep, c->app);
  s->admitted.erase(held);
  const auto& app = s->rules.config().apps[c->app];
  if (app.proxy_protocol_v2)
    c->preamble = proxy_v2(true, from_lwip(&pcb->remote_ip), pcb->remote_port, ep->vaddr, ep->p1);
  c->key = key;
  s->conns.insert(c);
  s->open_tuples.insert(key);
  ++s->counters.tcp_accepted;
  ++s->apps[c->app].accepted;
  ++s->apps[c->app].open;
  if (spdlog::should_log(spdlog::level::debug)) {
    c->who = fmt::format("{} > {} ({}, p2 {})",
                         vpm::Endpoint{from_lwip(&pcb->remote_ip), pcb->remote_port}.str(),
                         vpm::Endpoint{ep->vaddr, ep->p1}.str(), app.name, ep->p2);
    spdlog::debug("tcp open: {}", c->who);
  }
  tcp_arg(pcb, c);
  tcp_recv(pcb, on_tcp_recv);
  tcp_sent(pcb, on_tcp_sent);
  tcp_err(pcb, on_tcp_err);
  tcp_nagle_disable(pcb);
  if (c->service == Service::negotiate) {
    c->last_ms = now_ms();
    ++s->counters.negotiation_connections;
    tcp_poll(pcb, on_negotiation_idle, 10);  // every 5 s
  }
  if (s->large_mss) {  // the device cuts them to the client's MSS
    pcb->wire_mss = pcb->mss;  // what loss recovery counts in (patch 0003)
    pcb->mss = s->large_mss;
  }
  if (relayed(c->service)) {
    s->watch_backend(c);
    if (!c->preamble.empty() && !s->to_backend(c)) return ERR_ABRT;  // the PROXY header
    // What the backend sent before now: its edges have passed (Held::events).
    if (s->from_backend(c) == Stack::Impl::Outcome::aborted) return ERR_ABRT;
  }
  return ERR_OK;
}

void on_udp_recv(void* arg, udp_pcb*, pbuf* p, const ip_addr_t* addr, u16_t port) {
  auto* ep = static_cast<Endpoint*>(arg);
  auto* s = ep->stack;
  ++s->counters.udp_datagrams;
  uint16_t app = s->take_turn(ep);
  if (app == vpm::kNoApp) {
    pbuf_free(p);
    return;
  }
  switch (s->service_of(app)) {
    case Service::forward:
    case Service::exec:
      s->udp_forward(ep, app, p, addr, port);
      break;
    case Service::echo:
      s->udp_reply(ep, p, addr, port);
      break;
    case Service::discard:
    case Service::negotiate:  // TCP only: the configuration refuses a UDP cooperative listen
      break;
    case Service::http_info: {
      std::string body = s->info_json(ep->p1, ep->p2, app, addr, port, "udp");
      pbuf* reply = pbuf_alloc(PBUF_TRANSPORT, static_cast<u16_t>(body.size()), PBUF_RAM);
      if (reply) {
        pbuf_take(reply, body.data(), static_cast<u16_t>(body.size()));
        s->udp_reply(ep, reply, addr, port);
        pbuf_free(reply);
      }
      break;
    }
  }
  pbuf_free(p);
}

}  // namespace

// Where a packet that starts something goes. With per-connection
// allocation p2s are bound when first used, and each is lent to the app
// of the one flow that holds it.
Endpoint* Stack::Impl::endpoint_for(const vpm::PacketView& v, vpm::Proto proto, uint16_t app) {
  auto it = by_port.find({v.dst(), v.dst_port(), proto});
  Endpoint* ep = it == by_port.end() ? nullptr : it->second;
  if (!per_connection || app == vpm::kNoApp || !accepting) return ep;
  if (!ep) {
    int vi = rules.find_vaddr(v.dst());
    uint16_t p1 = vi < 0 || !rules.hidden(v.dst_port()) ? 0 : rules.p1_of(vi, proto, v.dst_port());
    if (p1 == 0 || !(ep = bind(v.dst(), p1, v.dst_port(), proto))) return nullptr;
  }
  ep->apps.assign(1, app);
  return ep;
}

Endpoint* Stack::Impl::bind(const vpm::IpAddr& vaddr, uint16_t p1, uint16_t p2, vpm::Proto proto) {
  auto ep = std::make_unique<Endpoint>();
  ep->stack = this;
  ep->vaddr = vaddr;
  ep->p1 = p1;
  ep->p2 = p2;
  ep->proto = proto;
  ip_addr_t addr = to_lwip(vaddr);
  if (proto == vpm::Proto::tcp) {
    tcp_pcb* pcb = tcp_new_ip_type(IP_GET_TYPE(&addr));
    if (!pcb) return nullptr;
    ip_set_option(pcb,
                  SOF_REUSEADDR);  // connections of an earlier endpoint may linger (lwipopts.h)
    if (tcp_bind(pcb, &addr, p2) != ERR_OK) {
      tcp_close(pcb);
      return nullptr;
    }
    ep->listener = tcp_listen(pcb);
    if (!ep->listener) {
      tcp_close(pcb);  // lwIP keeps the unlistened pcb when it fails
      return nullptr;
    }
    tcp_arg(ep->listener, ep.get());
    tcp_accept(ep->listener, on_tcp_accept);
  } else {
    ep->udp = udp_new_ip_type(IP_GET_TYPE(&addr));
    if (!ep->udp) return nullptr;
    if (udp_bind(ep->udp, &addr, p2) != ERR_OK) {
      udp_remove(ep->udp);
      return nullptr;
    }
    udp_recv(ep->udp, on_udp_recv, ep.get());
  }
  Endpoint* raw = ep.get();
  by_port[{vaddr, p2, proto}] = raw;
  endpoints.push_back(std::move(ep));
  return raw;
}

void Stack::Impl::unbind(Endpoint* ep) {
  if (ep->listener) tcp_close(ep->listener);
  std::erase_if(udp_sessions, [&](const auto& session) {
    if (session.second.ep != ep) return false;
    close_relay(session.second.sock);
    return true;
  });
  if (ep->udp) udp_remove(ep->udp);
  by_port.erase({ep->vaddr, ep->p2, ep->proto});
  std::erase_if(endpoints, [&](const auto& owned) { return owned.get() == ep; });
}

std::string Stack::Impl::sync_endpoints() {
  if (per_connection) return "";  // bound as p2s are first used (arrive())
  const auto& configured = rules.config().apps;
  std::set<Endpoint*> kept;
  std::string failed;
  for (const auto& l : rules.listens()) {
    for (size_t a = 0; a < l.p2_of_app.size(); ++a) {
      uint16_t p2 = l.p2_of_app[a];
      if (p2 == 0) continue;
      auto it = by_port.find({l.vaddr, p2, l.proto});
      Endpoint* ep = it != by_port.end() ? it->second : bind(l.vaddr, l.p1, p2, l.proto);
      if (!ep) {
        failed = fmt::format("cannot bind {}/{} in the stack", vpm::Endpoint{l.vaddr, p2}.str(),
                             vpm::proto_name(l.proto));
        continue;
      }
      if (kept.insert(ep).second) {
        ep->p1 = l.p1;
        ep->apps.clear();
        ep->draining.clear();
      }
      (configured[a].draining ? ep->draining : ep->apps).push_back(static_cast<uint16_t>(a));
    }
  }
  for (const auto& l : rules.listens())
    if (l.negotiator_app != vpm::kNoApp) bind_negotiation(l, kept, failed);
  std::vector<Endpoint*> gone;
  for (auto& ep : endpoints)
    if (!kept.count(ep.get())) gone.push_back(ep.get());
  for (Endpoint* ep : gone) unbind(ep);
  return failed;
}

Stack::Stack(const vpm::Ruleset& rules, uint32_t mtu, PacketSink sink, IoLoop* io,
             Instances* instances)
    : impl_(std::make_unique<Impl>(rules, std::move(sink))) {
  impl_->io = io;
  impl_->instances = instances;
  tcp_isn_source() = [s = impl_.get()](const ip_addr_t* local, uint16_t local_port,
                                       const ip_addr_t* remote, uint16_t remote_port) {
    return s->isn(local, local_port, remote, remote_port);
  };
  static bool initialised = false;
  if (!initialised) {
    lwip_init();
    initialised = true;
  }
  const auto& cfg = rules.config();
  impl_->per_connection = cfg.vpm.allocation == vpm::Allocation::per_connection;
  if (auto missing = impl_->missing_loop(); !missing.empty()) throw std::runtime_error(missing);

  impl_->mtu = static_cast<u16_t>(std::min<uint32_t>(mtu, 65535));
  impl_->limit_memory();
  impl_->sync_netifs();
  if (auto failed = impl_->sync_endpoints(); !failed.empty()) throw std::runtime_error(failed);
}

Stack::~Stack() {
  std::vector<Conn*> open(impl_->conns.begin(), impl_->conns.end());
  for (Conn* c : open) tcp_abort(c->pcb);  // calls on_tcp_err, which frees c
  for (auto& [key, c] : impl_->connecting) impl_->close_relay(c.sock);
  for (auto& [key, c] : impl_->admitted)
    if (c.sock >= 0) impl_->close_relay(c.sock);
  for (auto& [key, u] : impl_->udp_sessions) impl_->close_relay(u.sock);
  for (auto& ep : impl_->endpoints) {
    if (ep->listener) tcp_close(ep->listener);
    if (ep->udp) udp_remove(ep->udp);
  }
  for (auto& [addr, nif] : impl_->netifs) netif_remove(nif.get());
  tcp_isn_source() = nullptr;
}

void Stack::input(std::span<uint8_t> packet, uint16_t app, bool verified) {
  ++impl_->counters.packets_in;
  if (packet.empty() || packet.size() > 65535 || !netif_default) {
    ++impl_->counters.input_errors;
    return;
  }
  impl_->arrive(packet, app, verified);
}

void Stack::begin_batch() { impl_->batching = true; }

void Stack::end_batch() {
  impl_->batching = false;
  std::vector<Conn*> unsent;
  unsent.swap(impl_->unsent);
  // to_backend() frees only the connection it is given.
  for (Conn* c : unsent) {
    c->unsent = false;
    impl_->to_backend(c);
  }
  unsent.clear();
  if (impl_->unsent.empty()) impl_->unsent.swap(unsent);  // keep its capacity
}

void Stack::poll() {
  sys_check_timeouts();
  impl_->limit_time_wait();
  if (impl_->io) {
    impl_->expire_handshakes(now_ms());
    impl_->expire_udp_sessions(now_ms());
  }
}

// Set per connection, above TCP_MSS: lwIP's segment arithmetic is 16-bit
// but holds for any MSS whose segment, with 80 bytes of IP and TCP headers
// and options, still fits a 64 KiB packet and the netif's MTU. (TCP_MSS
// itself is capped by a sanity check about the socket API's low-water mark,
// which we do not use.)
void Stack::set_workers(uint32_t workers) {
  impl_->workers = std::max<uint32_t>(1, workers);
  impl_->limit_memory();
}

void Stack::send_large_segments() {
  uint32_t mtu = impl_->mtu;
  impl_->large_mss = static_cast<uint16_t>(std::clamp<uint32_t>(mtu, 100 + TCP_MSS, 65100) - 100);
}

std::string Stack::reload(const std::vector<uint16_t>& app_of) {
  Impl& s = *impl_;
  if (auto missing = s.missing_loop(); !missing.empty()) return missing;
  // Every app a connection belongs to is kept (the caller counted them
  // with connections_per_app()), so these never become kNoApp.
  auto remap = [&](uint16_t& app) { app = app_of.at(app); };
  for (Conn* c : s.conns) remap(c->app);
  for (auto& held : s.connecting) remap(held.second.app);
  // A handshake lwIP has not completed counts for its app through the
  // engine's flow; one whose app is gone was reset or abandoned by now.
  for (auto& held : s.admitted)
    held.second.app = held.second.app < app_of.size() ? app_of[held.second.app] : vpm::kNoApp;
  std::erase_if(s.admitted, [&](const auto& held) {
    if (held.second.app != vpm::kNoApp) return false;
    if (held.second.sock >= 0) s.close_relay(held.second.sock);
    return true;
  });
  std::vector<AppStackCounters> counters(s.rules.config().apps.size());
  for (size_t i = 0; i < app_of.size() && i < s.apps.size(); ++i)
    if (app_of[i] != vpm::kNoApp) counters[app_of[i]] = s.apps[i];
  s.apps = std::move(counters);
  s.limit_memory();
  s.sync_netifs();
  if (s.per_connection)  // endpoints are lent to the app of the flow holding them
    for (auto& ep : s.endpoints) {
      std::erase_if(ep->apps, [&](uint16_t& app) {
        app = app < app_of.size() ? app_of[app] : vpm::kNoApp;
        return app == vpm::kNoApp;
      });
    }
  return s.sync_endpoints();
}

std::vector<size_t> Stack::connections_per_app() const {
  std::vector<size_t> n(impl_->apps.size());
  for (Conn* c : impl_->conns) ++n[c->app];
  for (auto& held : impl_->connecting) ++n[held.second.app];
  return n;
}

void Stack::stop_accepting() {
  impl_->accepting = false;
  for (auto& ep : impl_->endpoints) {
    if (ep->listener) tcp_close(ep->listener);
    ep->listener = nullptr;
  }
}

size_t Stack::half_open() const { return impl_->half_open(); }

size_t Stack::open_connections() const { return impl_->conns.size() + impl_->connecting.size(); }

const std::vector<AppStackCounters>& Stack::app_counters() const { return impl_->apps; }

const StackCounters& Stack::counters() const {
  impl_->counters.lwip_asserts = lwip_assert_count();
  return impl_->counters;
}

}  // namespace stack
