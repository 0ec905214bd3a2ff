// Cooperative negotiation state machines (coop.hpp).
#include "vpm/coop.hpp"

#include <algorithm>

namespace vpm::coop {

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::offered:
      return "offered";
    case Outcome::negotiated:
      return "negotiated";
    case Outcome::not_cooperative:
      return "not_cooperative";
    case Outcome::no_app:
      return "no_app";
    case Outcome::busy:
      return "busy";
    case Outcome::unknown_offer:
      return "unknown_offer";
    case Outcome::mismatch:
      return "mismatch";
    case Outcome::aid_mismatch:
      return "aid_mismatch";
    case Outcome::admitted:
      return "admitted";
    case Outcome::not_negotiated:
      return "not_negotiated";
    case Outcome::window_passed:
      return "window_passed";
    case Outcome::pending:
      return "pending";
  }
  return "?";
}

namespace {

Reply refuse(Outcome why, Reason reason, const Nonce& about, Header fresh) {
  return {why, Refuse{fresh, about, reason}};
}

}  // namespace

Reply Negotiations::on_ask(const Ask& ask, uint64_t now_ms) {
  Header h = fresh_(now_ms);
  int vaddr = rules_.find_vaddr(ask.server.addr);
  const Listen* l = vaddr < 0 ? nullptr : rules_.find_listen(vaddr, ask.server.port, ask.proto);
  if (!l) return refuse(Outcome::not_cooperative, Reason::not_cooperative, ask.h.nonce, h);
  uint16_t app = rules_.classify(*l, ask.client.addr, ask.client.port);
  if (app == kNoApp) return refuse(Outcome::no_app, Reason::no_app, ask.h.nonce, h);
  // The client's rules chose an app that is not cooperative: its clients
  // come without a VPM of their own.
  if (!rules_.config().apps[app].cooperative)
    return refuse(Outcome::not_cooperative, Reason::not_cooperative, ask.h.nonce, h);
  expire(now_ms);
  if (offers_.size() >= kMaxPending) return refuse(Outcome::busy, Reason::busy, ask.h.nonce, h);
  Offer offer{h,
              ask.h.nonce,
              ask.client,
              ask.server,
              ask.proto,
              l->p2_of_app[app],
              {rules_.config().apps[app].aid}};
  offer.h.expiry_ms = std::min(offer.h.expiry_ms, now_ms + kOfferMs);
  if (auto same = offers_.find(offer.h.nonce); same != offers_.end()) forget(same);
  offered_[{offer.client, offer.server.addr, offer.p2, offer.proto}] = offer.h.nonce;
  auto goes = offers_go_.emplace(offer.h.expiry_ms, offer.h.nonce);
  offers_[offer.h.nonce] = {offer, app, goes};
  return {Outcome::offered, offer};
}

Reply Negotiations::on_ack(const Ack& ack, uint64_t now_ms) {
  Header h = fresh_(now_ms);
  expire(now_ms);
  auto it = offers_.find(ack.in_reply_to);
  if (it == offers_.end())
    return refuse(Outcome::unknown_offer, Reason::bad_message, ack.h.nonce, h);
  Pending p = std::move(it->second);
  forget(it);  // one Ack per offer: another is a replay
  const Offer& o = p.offer;
  bool offered_aid = std::find(o.aids.begin(), o.aids.end(), ack.aid) != o.aids.end();
  if (ack.client != o.client || ack.server != o.server || ack.p2 != o.p2)
    return refuse(Outcome::mismatch, Reason::bad_message, ack.h.nonce, h);
  if (!offered_aid) return refuse(Outcome::aid_mismatch, Reason::aid_mismatch, ack.h.nonce, h);
  if (translations_.size() >= kMaxNegotiated)
    return refuse(Outcome::busy, Reason::busy, ack.h.nonce, h);
  Key key{o.client, o.server.addr, o.p2, o.proto};
  if (auto old = translations_.find(key); old != translations_.end())
    translations_go_.erase(old->second.goes);  // negotiated again: the new one counts
  uint64_t until = now_ms + kWindowMs;
  translations_[key] = {ack.aid, p.app, until, o.server.port, false, 0,
                        translations_go_.emplace(until + kWindowMs, key)};
  return {Outcome::negotiated, std::nullopt};
}

void Negotiations::on_refuse(const Refuse& refuse) {
  if (auto it = offers_.find(refuse.in_reply_to); it != offers_.end()) forget(it);
}

void Negotiations::forget(std::map<Nonce, Pending>::iterator offer) {
  const Offer& o = offer->second.offer;
  auto by_key = offered_.find({o.client, o.server.addr, o.p2, o.proto});
  if (by_key != offered_.end() && by_key->second == offer->first) offered_.erase(by_key);
  offers_go_.erase(offer->second.goes);
  offers_.erase(offer);
}

Outcome Negotiations::admit(const Endpoint& client, const IpAddr& vaddr, uint16_t p2, Proto proto,
                            uint64_t now_ms, uint32_t isn) {
  Key key{client, vaddr, p2, proto};
  auto it = translations_.find(key);
  if (it != translations_.end() && !it->second.used) {
    it->second.used = true;  // kept, to be shown, until it would have expired
    it->second.isn = isn;
    return now_ms <= it->second.until_ms ? Outcome::admitted : Outcome::window_passed;
  }
  // Used once: by one connection, whose SYN may come again (its flow
  // ended by a RST before the handshake completed) with the same ISN.
  if (it != translations_.end() && isn == it->second.isn) return Outcome::admitted;
  // A SYN that overtook its Ack (the client's port may have served a
  // connection negotiated before: that one is used).
  auto offered = offered_.find(key);
  bool waiting = offered != offered_.end() && offers_.count(offered->second) &&
                 offers_.at(offered->second).offer.h.expiry_ms >= now_ms;
  return waiting ? Outcome::pending : Outcome::not_negotiated;
}

bool Negotiations::admissible(const Endpoint& client, const IpAddr& vaddr, uint16_t p2, Proto proto,
                              uint64_t now_ms) const {
  auto it = translations_.find({client, vaddr, p2, proto});
  return it != translations_.end() && !it->second.used && now_ms <= it->second.until_ms;
}

void Negotiations::expire(uint64_t now_ms) {
  while (!offers_go_.empty() && offers_go_.begin()->first < now_ms)
    forget(offers_.find(offers_go_.begin()->second));
  // A translation past its window is kept one more window, so a client
  // that comes late is told so (window_passed), not "never negotiated".
  while (!translations_go_.empty() && translations_go_.begin()->first < now_ms) {
    translations_.erase(translations_go_.begin()->second);
    translations_go_.erase(translations_go_.begin());
  }
}

std::vector<Negotiations::Entry> Negotiations::entries(uint64_t now_ms) const {
  std::vector<Entry> out;
  for (const auto& [nonce, p] : offers_) {
    const Offer& o = p.offer;
    out.push_back({"pending", o.client, o.server, o.p2, o.aids.empty() ? 0 : o.aids[0], p.app,
                   o.h.expiry_ms});
  }
  for (const auto& [key, t] : translations_) {
    const auto& [client, vaddr, p2, proto] = key;
    const char* state = t.used ? "connected" : now_ms <= t.until_ms ? "negotiated" : "expired";
    out.push_back({state, client, {vaddr, t.p1}, p2, t.aid, t.app, t.until_ms});
  }
  return out;
}

Reply answer(const Ask& ours, const Message& theirs, uint32_t our_aid, Header fresh) {
  if (const auto* r = std::get_if<Refuse>(&theirs)) {
    if (r->in_reply_to != ours.h.nonce) return {Outcome::mismatch, std::nullopt};
    Outcome o = r->reason == Reason::no_app            ? Outcome::no_app
                : r->reason == Reason::not_cooperative ? Outcome::not_cooperative
                : r->reason == Reason::busy            ? Outcome::busy
                                                       : Outcome::mismatch;
    return {o, std::nullopt};
  }
  const auto* o = std::get_if<Offer>(&theirs);
  // Not an answer to what we asked: say so, and the program is refused.
  if (!o || o->in_reply_to != ours.h.nonce || o->client != ours.client ||
      o->server != ours.server || o->proto != ours.proto || o->p2 == 0)
    return refuse(Outcome::mismatch, Reason::bad_message, o ? o->h.nonce : Nonce{}, fresh);
  if (std::find(o->aids.begin(), o->aids.end(), our_aid) == o->aids.end())
    return refuse(Outcome::aid_mismatch, Reason::aid_mismatch, o->h.nonce, fresh);
  return {Outcome::negotiated, Ack{fresh, o->h.nonce, o->client, o->server, o->p2, our_aid}};
}

}  // namespace vpm::coop
