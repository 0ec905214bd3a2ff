// Cooperative mode's endpoint on p1: the stack carries the negotiation's
// bytes between the client's VPM and the Negotiator (stack.hpp).
#include <fmt/core.h>

#include "stack_impl.hpp"

namespace stack {

void Stack::negotiate_with(Negotiator* negotiator) { impl_->negotiator = negotiator; }

void Stack::Impl::bind_negotiation(const vpm::Listen& l, std::set<Endpoint*>& kept,
                                   std::string& failed) {
  auto it = by_port.find({l.vaddr, l.p1, vpm::Proto::tcp});
  Endpoint* ep = it != by_port.end() ? it->second : bind(l.vaddr, l.p1, l.p1, vpm::Proto::tcp);
  if (!ep) {
    failed = fmt::format("cannot bind {}/tcp in the stack for negotiation",
                         vpm::Endpoint{l.vaddr, l.p1}.str());
    return;
  }
  ep->negotiates = true;
  ep->apps.assign(1, l.negotiator_app);  // whose counters its connections count in
  ep->draining.clear();
  kept.insert(ep);
}

bool Stack::Impl::negotiate(Conn* c, pbuf* p) {
  c->last_ms = now_ms();
  size_t at = c->request.size();
  if (!negotiator || at + p->tot_len > kMaxNegotiationBytes) {
    pbuf_free(p);
    abort(c);
    return false;
  }
  c->request.resize(at + p->tot_len);
  pbuf_copy_partial(p, c->request.data() + at, p->tot_len, 0);
  tcp_recved(c->pcb, p->tot_len);
  pbuf_free(p);
  std::vector<uint8_t> reply;
  Negotiator::End end = Negotiator::End::keep;
  vpm::Endpoint peer{from_lwip(&c->pcb->remote_ip), c->pcb->remote_port};
  vpm::Endpoint local{from_lwip(&c->pcb->local_ip), c->pcb->local_port};
  size_t taken = negotiator->heard(
      {reinterpret_cast<const uint8_t*>(c->request.data()), c->request.size()}, peer, local, reply,
      end);
  c->request.erase(0, std::min(taken, c->request.size()));
  // Answers are a few hundred bytes each, to a peer that waits for them:
  // one that leaves them unread past the send buffer is not negotiating.
  if (end != Negotiator::End::reset && !reply.empty() &&
      (reply.size() > tcp_sndbuf(c->pcb) ||
       tcp_write(c->pcb, reply.data(), static_cast<u16_t>(reply.size()), TCP_WRITE_FLAG_COPY) !=
           ERR_OK))
    end = Negotiator::End::reset;
  if (end == Negotiator::End::reset) {
    abort(c);
    return false;
  }
  tcp_output(c->pcb);
  if (end == Negotiator::End::close) close(c);
  return true;
}

err_t on_negotiation_idle(void* arg, tcp_pcb*) {
  auto* c = static_cast<Conn*>(arg);
  if (!c || now_ms() - c->last_ms < kNegotiationIdleMs) return ERR_OK;
  ++c->stack->counters.negotiation_idle;
  c->stack->abort(c);
  return ERR_ABRT;
}

}  // namespace stack
