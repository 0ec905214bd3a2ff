// The built-in services (echo, discard, http-info) and the callbacks of accepted connections.
#include <fmt/core.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "stack_impl.hpp"

namespace stack {

std::string Stack::Impl::info_json(uint16_t p1, uint16_t p2, uint16_t app, const ip_addr_t* client,
                                   uint16_t port, const char* proto) const {
  const auto& a = rules.config().apps[app];
  return fmt::format(
      "{{\"app\":\"{}\",\"aid\":{},\"p1\":{},\"p2\":{},\"client\":\"{}\",\"protocol\":\"{}\","
      "\"node\":\"{}\"}}\n",
      a.name, a.aid, p1, p2, vpm::Endpoint{from_lwip(client), port}.str(), proto,
      rules.config().daemon.name);
}

void Stack::Impl::forget(Conn* c) {
  if (!c->who.empty()) spdlog::debug("tcp closed: {}", c->who);
  if (c->pending) pbuf_free(c->pending);
  if (c->unsent) std::erase(unsent, c);
  if (c->sock >= 0) close_relay(c->sock);
  conns.erase(c);
  open_tuples.erase(c->key);
  --apps[c->app].open;
  ++counters.tcp_closed;
  delete c;
}

// Resets the client's connection. lwIP frees a TIME_WAIT pcb on abort
// without calling the error callback, so that case is closed instead.
void Stack::Impl::abort(Conn* c) {
  if (c->pcb->state == TIME_WAIT)
    close(c);
  else
    tcp_abort(c->pcb);  // on_tcp_err frees c
}

// Closes our side once everything queued has been handed to lwIP.
void Stack::Impl::close(Conn* c) {
  tcp_arg(c->pcb, nullptr);
  tcp_recv(c->pcb, nullptr);
  tcp_sent(c->pcb, nullptr);
  tcp_err(c->pcb, nullptr);
  if (tcp_close(c->pcb) != ERR_OK) tcp_abort(c->pcb);
  forget(c);
}

// Data from the client that the endpoint has not passed on yet.
void Stack::Impl::hold(Conn* c, pbuf* p) {
  c->pending_bytes += p->tot_len;
  // Linked at the tail we keep, not with pbuf_cat, which walks the whole
  // chain to update every tot_len: nothing reads the tot_len of this chain
  // (pending_bytes counts it), and a train of small packets makes it long.
  if (c->pending)
    c->pending_tail->next = p;
  else
    c->pending = p;
  for (c->pending_tail = p; c->pending_tail->next;) c->pending_tail = c->pending_tail->next;
}

void Stack::Impl::consumed(Conn* c, size_t n) {
  c->pending_bytes -= n;
  while (n > 0) {  // both take 16-bit counts
    auto part = static_cast<u16_t>(std::min<size_t>(n, 0xffff));
    tcp_recved(c->pcb, part);
    c->pending = pbuf_free_header(c->pending, part);
    n -= part;
  }
  if (!c->pending) c->pending_tail = nullptr;
}

// Echo: queue back what was read, as far as the send buffer allows, and
// acknowledge only that much (the client's window is our back-pressure).
void Stack::Impl::pump(Conn* c) {
  while (c->pending && send_room(c->pcb) > 0) {
    auto n = static_cast<u16_t>(std::min<size_t>(c->pending->len, send_room(c->pcb)));
    if (tcp_write(c->pcb, c->pending->payload, n, TCP_WRITE_FLAG_COPY) != ERR_OK) break;
    consumed(c, n);
  }
  tcp_output(c->pcb);
  if (!c->pending && c->fin_seen && !c->sent_fin) {
    // All echoed: our FIN follows the data; lwIP frees the pcb after the
    // client's last ACK and tells on_tcp_err (ERR_CLSD), which frees c.
    c->sent_fin = true;
    tcp_shutdown(c->pcb, 0, 1);
  }
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
    else if (relayed(c->service)) {
      if (!s->to_backend(c)) return ERR_ABRT;  // half-close towards the backend once all is sent
      // Both directions have ended: the pcb may already be in TIME_WAIT.
      if (c->sent_fin) s->close(c);
    } else
      s->close(c);
    return ERR_OK;
  }
  if ((relayed(c->service) || c->service == Service::echo) && c->pending &&
      c->pending_bytes >= kPressedPending && stack_memory().pressed()) {
    // Memory is short and this connection holds enough it has not passed
    // on: lwIP keeps `p` and offers it again later, taking no more data
    // from this client meanwhile (its window stays shut).
    ++s->counters.memory_deferrals;
    return ERR_MEM;
  }
  switch (c->service) {
    case Service::negotiate:
      return s->negotiate(c, p) ? ERR_OK : ERR_ABRT;
    case Service::forward:
    case Service::exec:
      s->hold(c, p);
      if (s->batching && c->pending_bytes < kBatchBytes) {
        if (!c->unsent) s->unsent.push_back(c);
        c->unsent = true;
        return ERR_OK;
      }
      return s->to_backend(c) ? ERR_OK : ERR_ABRT;
    case Service::echo:
      s->hold(c, p);
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
        std::string body =
            s->info_json(c->p1, c->p2, c->app, &pcb->remote_ip, pcb->remote_port, "tcp");
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
  if (c && relayed(c->service) && c->stack->from_backend(c) == Stack::Impl::Outcome::aborted)
    return ERR_ABRT;
  return ERR_OK;
}

void on_tcp_err(void* arg, err_t) {
  // lwIP has freed the pcb already (reset, or aborted).
  if (auto* c = static_cast<Conn*>(arg)) c->stack->forget(c);
}

}  // namespace stack
