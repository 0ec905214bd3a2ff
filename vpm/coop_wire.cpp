// Cooperative negotiation messages: seal, open, replay bound (coop_wire.hpp).
#include "vpm/coop_wire.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "vpm/lazy_library.hpp"
#include "vpm/wire_io.hpp"

namespace vpm::coop {

const char* reason_name(Reason r) {
  switch (r) {
    case Reason::not_cooperative:
      return "not cooperative";
    case Reason::no_app:
      return "no app for this client";
    case Reason::aid_mismatch:
      return "AID mismatch";
    case Reason::bad_message:
      return "bad message";
    case Reason::busy:
      return "busy";
  }
  return "?";
}

namespace {

using wire::Reader;
using wire::Writer;

// The three functions of libcrypto that cooperative mode uses, from the
// library loaded when first needed (VPMTUN_LIBCRYPTO is its SONAME).
struct Crypto {
  decltype(&HMAC) hmac;
  decltype(&EVP_sha256) sha256;
  decltype(&CRYPTO_memcmp) equal;
};

const Crypto& crypto() {
  static LazyLibrary lib(VPMTUN_LIBCRYPTO, "cooperative mode (HMAC-SHA256)");
  static const Crypto c{lib.function<decltype(HMAC)>("HMAC"),
                        lib.function<decltype(EVP_sha256)>("EVP_sha256"),
                        lib.function<decltype(CRYPTO_memcmp)>("CRYPTO_memcmp")};
  return c;
}

std::array<uint8_t, kMacBytes> mac_of(std::span<const uint8_t> key, std::span<const uint8_t> data) {
  std::array<uint8_t, kMacBytes> out{};
  unsigned len = 0;
  const Crypto& c = crypto();
  c.hmac(c.sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), out.data(),
         &len);
  return out;
}

Nonce nonce(Reader& r) {
  Nonce n{};
  r.bytes(n);
  return n;
}

}  // namespace

void load_crypto() { crypto(); }

const Header& header_of(const Message& m) {
  return std::visit([](const auto& x) -> const Header& { return x.h; }, m);
}

std::vector<uint8_t> seal(const Message& m, std::span<const uint8_t> key) {
  Writer w;
  w.u8(kVersion);
  w.u8(static_cast<uint8_t>(m.index() + 1));  // Type follows the variant's order
  w.u16(0);                                   // set below
  const Header& h = header_of(m);
  w.bytes(h.nonce);
  w.u64(h.expiry_ms);
  if (auto* a = std::get_if<Ask>(&m)) {
    w.endpoint(a->client);
    w.endpoint(a->server);
    w.u8(static_cast<uint8_t>(a->proto));
  } else if (auto* o = std::get_if<Offer>(&m)) {
    w.bytes(o->in_reply_to);
    w.endpoint(o->client);
    w.endpoint(o->server);
    w.u8(static_cast<uint8_t>(o->proto));
    w.u16(o->p2);
    size_t n = std::min(o->aids.size(), kMaxAids);
    w.u8(static_cast<uint8_t>(n));
    for (size_t i = 0; i < n; ++i) w.u32(o->aids[i]);
  } else if (auto* k = std::get_if<Ack>(&m)) {
    w.bytes(k->in_reply_to);
    w.endpoint(k->client);
    w.endpoint(k->server);
    w.u16(k->p2);
    w.u32(k->aid);
  } else if (auto* f = std::get_if<Refuse>(&m)) {
    w.bytes(f->in_reply_to);
    w.u8(static_cast<uint8_t>(f->reason));
  }
  size_t rest = w.out.size() - 4 + kMacBytes;
  w.out[2] = static_cast<uint8_t>(rest >> 8);
  w.out[3] = static_cast<uint8_t>(rest);
  w.bytes(mac_of(key, w.out));
  return w.out;
}

std::optional<Message> open(std::span<const uint8_t> bytes, std::span<const uint8_t> key,
                            uint64_t now_ms, std::string* why) {
  auto bad = [&](const char* reason) {
    if (why) *why = reason;
    return std::optional<Message>();
  };
  if (bytes.size() > kMaxMessage) return bad("longer than 512 bytes");
  if (bytes.size() < 4 + kMacBytes) return bad("shorter than a header and a MAC");
  if (bytes[0] != kVersion) return bad("unknown version");
  if ((size_t{bytes[2]} << 8 | bytes[3]) != bytes.size() - 4) return bad("length disagrees");
  // The MAC first: nothing of a message that fails it is looked at.
  auto body = bytes.first(bytes.size() - kMacBytes);
  auto want = mac_of(key, body);
  if (crypto().equal(want.data(), bytes.data() + body.size(), kMacBytes) != 0)
    return bad("MAC does not match (another key, or altered)");
  Reader r(body.subspan(4));
  Header h;
  h.nonce = nonce(r);
  h.expiry_ms = r.u64();
  Message m;
  switch (static_cast<Type>(bytes[1])) {
    case Type::ask: {
      Ask a{h, r.endpoint(), r.endpoint(), Proto::tcp};
      auto p = wire::proto_of(r.u8());
      if (!p) return bad("unknown protocol");
      a.proto = *p;
      m = a;
      break;
    }
    case Type::offer: {
      Offer o;
      o.h = h;
      o.in_reply_to = nonce(r);
      o.client = r.endpoint();
      o.server = r.endpoint();
      auto p = wire::proto_of(r.u8());
      o.p2 = r.u16();
      size_t n = r.u8();
      if (!p) return bad("unknown protocol");
      if (n > kMaxAids) return bad("too many AIDs");
      o.proto = *p;
      for (size_t i = 0; i < n && !r.bad(); ++i) o.aids.push_back(r.u32());
      m = o;
      break;
    }
    case Type::ack: {
      Ack k;
      k.h = h;
      k.in_reply_to = nonce(r);
      k.client = r.endpoint();
      k.server = r.endpoint();
      k.p2 = r.u16();
      k.aid = r.u32();
      m = k;
      break;
    }
    case Type::refuse: {
      Refuse f;
      f.h = h;
      f.in_reply_to = nonce(r);
      uint8_t reason = r.u8();
      if (reason < 1 || reason > static_cast<uint8_t>(Reason::busy)) return bad("unknown reason");
      f.reason = static_cast<Reason>(reason);
      m = f;
      break;
    }
    default:
      return bad("unknown message type");
  }
  if (!r.done()) return bad("fields do not fill the body");
  if (h.expiry_ms < now_ms) return bad("expired");
  if (h.expiry_ms > now_ms + kMaxLifetimeMs) return bad("expiry too far ahead");
  return m;
}

size_t frame_size(std::span<const uint8_t> stream) {
  if (!stream.empty() && stream[0] != kVersion) return kNotOurs;
  if (stream.size() > 1 && (stream[1] < static_cast<uint8_t>(Type::ask) ||
                            stream[1] > static_cast<uint8_t>(Type::refuse)))
    return kNotOurs;
  if (stream.size() < 4) return 0;
  size_t size = 4 + (size_t{stream[2]} << 8 | stream[3]);
  return size > kMaxMessage || size < 4 + kMacBytes ? kNotOurs : size;
}

bool NonceCache::first_use(const Nonce& n, uint64_t expiry_ms, uint64_t now_ms) {
  forget_expired(now_ms);
  if (by_nonce_.count(n) || by_nonce_.size() >= max_) return false;
  by_nonce_.emplace(n, expiry_ms);
  by_expiry_.emplace(expiry_ms, n);
  return true;
}

void NonceCache::forget_expired(uint64_t now_ms) {
  while (!by_expiry_.empty() && by_expiry_.begin()->first < now_ms) {
    by_nonce_.erase(by_expiry_.begin()->second);
    by_expiry_.erase(by_expiry_.begin());
  }
}

}  // namespace vpm::coop
