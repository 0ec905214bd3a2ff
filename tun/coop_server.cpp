// Cooperative mode, the server's VPM: negotiation on p1, admission on p2 (coop.hpp).
#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <chrono>
#include <cstring>

#include "vpm/packet.hpp"

#include "tun/coop.hpp"

namespace tun {

using namespace vpm::coop;

uint64_t wall_ms() {
  using namespace std::chrono;
  return static_cast<uint64_t>(
      duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
}

Header fresh_header(uint64_t now_ms) {
  Header h;
  size_t got = 0;
  while (got < h.nonce.size()) {
    ssize_t n = ::getrandom(h.nonce.data() + got, h.nonce.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  h.expiry_ms = now_ms + kMessageMs;
  return h;
}

namespace {

// The nonces a peer may bring within kMaxLifetimeMs, and then some: a full
// cache refuses (it never forgets a live nonce early).
constexpr size_t kMaxNonces = 1 << 18;

bool refusal(Outcome o) {
  return o != Outcome::offered && o != Outcome::negotiated && o != Outcome::admitted;
}

}  // namespace

CoopServer::CoopServer(const vpm::Ruleset& rules, std::vector<uint8_t> key)
    : key_(std::move(key)), negotiations_(rules, fresh_header), nonces_(kMaxNonces) {}

void CoopServer::refused(const vpm::Endpoint& peer, const std::string& why) {
  if (log_.take()) spdlog::info("cooperative: refused {}: {}", peer.str(), why);
}

size_t CoopServer::heard(std::span<const uint8_t> stream, const vpm::Endpoint& peer,
                         const vpm::Endpoint& local, std::vector<uint8_t>& reply, End& end) {
  uint64_t now = wall_ms();
  size_t at = 0;
  for (;;) {
    auto rest = stream.subspan(at);
    size_t size = frame_size(rest);
    if (size == kNotOurs) {
      ++wire_.plain_clients;
      refused(peer, "not a negotiation on " + local.str() +
                        " (a client without its own VPM, on a cooperative app's p1)");
      end = End::reset;
      return stream.size();
    }
    if (size == 0 || size > rest.size()) return at;
    at += size;
    std::string why;
    auto m = open(rest.first(size), key_, now, &why);
    if (m && !nonces_.first_use(header_of(*m).nonce, header_of(*m).expiry_ms, now)) {
      m.reset();
      why = "replayed (its nonce was seen before)";
      ++wire_.replayed;
    } else if (!m) {
      if (why.starts_with("MAC"))
        ++wire_.bad_mac;
      else if (why.starts_with("expir"))
        ++wire_.expired;
      else
        ++wire_.malformed;
    }
    if (!m || std::holds_alternative<Offer>(*m)) {
      refused(peer, "negotiation message " + (m ? std::string("out of turn (an Offer)") : why));
      end = End::reset;
      return stream.size();
    }
    Reply r{Outcome::offered, std::nullopt};
    if (const auto* ask = std::get_if<Ask>(&*m)) {
      r = negotiations_.on_ask(*ask, now);
      if (refusal(r.outcome))
        refused(peer, "Ask for " + ask->client.str() + " to " + ask->server.str() + ": " +
                          outcome_name(r.outcome));
    } else if (const auto* ack = std::get_if<Ack>(&*m)) {
      r = negotiations_.on_ack(*ack, now);
      if (refusal(r.outcome))
        refused(peer, "Ack for " + ack->client.str() + " (aid " + std::to_string(ack->aid) +
                          "): " + outcome_name(r.outcome));
    } else {
      negotiations_.on_refuse(std::get<Refuse>(*m));
      r.outcome = Outcome::aid_mismatch;  // the client's VPM declined the offer
    }
    ++outcomes_[static_cast<size_t>(r.outcome)];
    acked_ |= r.outcome == Outcome::negotiated;
    if (r.send) {
      auto sealed = seal(*r.send, key_);
      reply.insert(reply.end(), sealed.begin(), sealed.end());
    }
  }
}

Outcome CoopServer::admit(const vpm::Endpoint& client, const vpm::IpAddr& vaddr, uint16_t p2,
                          uint32_t isn) {
  Outcome o = negotiations_.admit(client, vaddr, p2, vpm::Proto::tcp, wall_ms(), isn);
  // A SYN waiting for its Ack is retransmitted: count the outcome it ends with.
  if (o != Outcome::pending) ++outcomes_[static_cast<size_t>(o)];
  if (refusal(o) && o != Outcome::pending)
    refused(client, "connection to " + vpm::Endpoint{vaddr, p2}.str() + ": " + outcome_name(o));
  return o;
}

void CoopServer::hold(std::span<const uint8_t> syn, uint64_t now_ms) {
  std::vector<uint8_t> copy(syn.begin(), syn.end());
  vpm::PacketView v;
  if (vpm::parse_packet(copy, v) != vpm::Drop::none || !v.has_l4) return;
  // A retransmission replaces the copy held.
  std::erase_if(held_, [&](const Held& h) {
    return h.client == vpm::Endpoint{v.src(), v.src_port()} && h.p2 == v.dst_port();
  });
  if (held_.size() == kMaxHeld) held_.pop_front();
  held_.push_back({{v.src(), v.src_port()}, v.dst(), v.dst_port(), std::move(copy), now_ms});
}

std::vector<std::vector<uint8_t>> CoopServer::released(uint64_t now_ms) {
  std::vector<std::vector<uint8_t>> out;
  while (!held_.empty() && now_ms > held_.front().since_ms + kHeldMs) held_.pop_front();
  if (!acked_) return out;
  acked_ = false;
  uint64_t wall = wall_ms();
  std::erase_if(held_, [&](Held& h) {
    if (negotiations_.admissible(h.client, h.vaddr, h.p2, vpm::Proto::tcp, wall)) {
      out.push_back(std::move(h.syn));
      return true;
    }
    return false;
  });
  return out;
}

}  // namespace tun
