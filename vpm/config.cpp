// TOML configuration parsing and validation (toml++).
#include "vpm/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

namespace vpm {

std::string ConfigError::str() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line);
  out += ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

std::optional<uint64_t> parse_duration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  uint64_t total = 0;
  while (!text.empty()) {
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end == text.data()) return std::nullopt;
    text.remove_prefix(static_cast<size_t>(end - text.data()));
    uint64_t unit = 0;
    if (text.starts_with("ms"))
      unit = 1, text.remove_prefix(2);
    else if (text.starts_with("h"))
      unit = 3600000, text.remove_prefix(1);
    else if (text.starts_with("m"))
      unit = 60000, text.remove_prefix(1);
    else if (text.starts_with("s"))
      unit = 1000, text.remove_prefix(1);
    else
      return std::nullopt;
    total += n * unit;
  }
  return total;
}

namespace {

// A name as an error message may quote it: bytes that are not printable
// ASCII as \xNN, and no longer than 80 characters.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 80)) {
    auto ch = static_cast<unsigned char>(c);
    if (ch >= 0x20 && ch < 0x7f) {
      out += c;
    } else {
      constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[ch >> 4], kHex[ch & 15]};
    }
  }
  return text.size() > 80 ? out + "..." : out;
}

// Collects errors while walking the document; one per offending key.
class Checker {
 public:
  explicit Checker(std::string file) : file_(std::move(file)) {}

  void fail(const toml::node* at, std::string key, std::string message) {
    int line = at ? static_cast<int>(at->source().begin.line) : 0;
    errors.push_back({file_, line, std::move(key), std::move(message)});
  }
  void fail_line(int line, std::string key, std::string message) {
    errors.push_back({file_, line, std::move(key), std::move(message)});
  }

  // Reports keys of `table` that are not in `known`.
  void only_keys(const toml::table& table, const std::string& where,
                 std::initializer_list<std::string_view> known) {
    for (auto&& [k, v] : table) {
      if (std::find(known.begin(), known.end(), k.str()) != known.end()) continue;
      std::string list;
      for (auto name : known) list += (list.empty() ? "" : ", ") + std::string(name);
      fail(&v, where.empty() ? std::string(k.str()) : where + "." + std::string(k.str()),
           "unknown key (known keys here: " + list + ")");
    }
  }

  std::optional<std::string> string(const toml::table& t, std::string_view k,
                                    const std::string& key) {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    note(n, key);
    if (auto s = n->value<std::string>()) return s;
    fail(n, key, "must be a string");
    return std::nullopt;
  }

  std::optional<int64_t> integer(const toml::table& t, std::string_view k, const std::string& key,
                                 int64_t lo, int64_t hi) {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    note(n, key);
    auto v = n->value<int64_t>();
    if (!v || !n->is_integer()) {
      fail(n, key, "must be an integer");
      return std::nullopt;
    }
    if (*v < lo || *v > hi) {
      fail(n, key,
           std::to_string(*v) + " is out of range " + std::to_string(lo) + ".." +
               std::to_string(hi));
      return std::nullopt;
    }
    return v;
  }

  std::optional<bool> boolean(const toml::table& t, std::string_view k, const std::string& key) {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    note(n, key);
    if (auto b = n->value_exact<bool>()) return b;
    fail(n, key, "must be true or false");
    return std::nullopt;
  }

  void duration(const toml::table& t, std::string_view k, const std::string& key, uint64_t& out) {
    if (auto s = string(t, k, key)) {
      auto ms = parse_duration(*s);
      if (!ms || *ms == 0)
        fail(t.get(k), key, "'" + *s + "' is not a duration like \"2h4m\", \"30s\" or \"500ms\"");
      else
        out = *ms;
    }
  }

  // A table-valued key, or nullptr (with an error if it is something else).
  const toml::table* section(const toml::table& root, std::string_view k) {
    const toml::node* n = root.get(k);
    if (!n) return nullptr;
    if (auto t = n->as_table()) return t;
    fail(n, std::string(k), "must be a table ([" + std::string(k) + "])");
    return nullptr;
  }

  std::vector<ConfigError> errors;
  std::map<std::string, int> lines;  // Config::lines

 private:
  void note(const toml::node* n, const std::string& key) {
    lines[key] = static_cast<int>(n->source().begin.line);
  }
  std::string file_;
};

std::optional<Prefix> prefix_key(Checker& c, const toml::table& t, std::string_view k,
                                 const std::string& key) {
  auto s = c.string(t, k, key);
  if (!s) return std::nullopt;
  std::string why;
  // The TUN's own address keeps its host bits: "10.99.0.1/24" means address .1 on a /24.
  auto slash = s->find('/');
  auto addr = IpAddr::parse(std::string_view(*s).substr(0, slash));
  unsigned len = 0;
  if (addr && slash != std::string::npos) {
    auto digits = std::string_view(*s).substr(slash + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    unsigned max = addr->is_v4() ? 32 : 128;
    if (ec == std::errc() && end == digits.data() + digits.size() && len <= max)
      return Prefix{*addr, static_cast<uint8_t>(len)};
  }
  c.fail(t.get(k), key, "'" + *s + "' should be address/length, like 10.99.0.1/24");
  return std::nullopt;
}

void parse_tun(Checker& c, const toml::table& t, TunConfig& tun) {
  c.only_keys(
      t, "tun",
      {"name", "mtu", "address", "address6", "configure", "offload", "txqueuelen", "queues"});
  if (auto s = c.string(t, "name", "tun.name")) {
    if (s->empty() || s->size() > 15 || s->find('/') != std::string::npos)
      c.fail(t.get("name"), "tun.name",
             "'" + *s + "' is not a valid interface name (1-15 characters, no '/')");
    else
      tun.name = *s;
  }
  if (auto v = c.integer(t, "mtu", "tun.mtu", 576, 65535)) tun.mtu = static_cast<uint32_t>(*v);
  tun.address = prefix_key(c, t, "address", "tun.address");
  if (tun.address && !tun.address->addr.is_v4())
    c.fail(t.get("address"), "tun.address",
           "must be an IPv4 address/length (use address6 for IPv6)");
  tun.address6 = prefix_key(c, t, "address6", "tun.address6");
  if (tun.address6 && tun.address6->addr.is_v4())
    c.fail(t.get("address6"), "tun.address6", "must be an IPv6 address/length");
  if (tun.address6 && tun.mtu < 1280)
    c.fail(t.get("mtu"), "tun.mtu", "IPv6 needs an MTU of at least 1280");
  if (auto b = c.boolean(t, "configure", "tun.configure")) tun.configure = *b;
  if (auto b = c.boolean(t, "offload", "tun.offload")) tun.offload = *b;
  if (auto v = c.integer(t, "txqueuelen", "tun.txqueuelen", 1, 1 << 20))
    tun.txqueuelen = static_cast<uint32_t>(*v);
  if (const toml::node* n = t.get("queues"); n && n->is_string()) {
    if (c.string(t, "queues", "tun.queues") != "auto")
      c.fail(n, "tun.queues",
             "must be \"auto\" (one worker per core) or a number 1.." + std::to_string(kMaxQueues));
  } else if (auto v = c.integer(t, "queues", "tun.queues", 1, kMaxQueues)) {
    tun.queues = static_cast<uint32_t>(*v);
    tun.queues_auto = false;
  }
}

void parse_vpm(Checker& c, const toml::table& t, VpmConfig& vpm) {
  c.only_keys(t, "vpm",
              {"port_range", "allocation", "queue_timeout_ms", "unmatched", "control_socket",
               "app_socket", "max_flows", "stack_memory_mb"});
  if (auto s = c.string(t, "port_range", "vpm.port_range")) {
    unsigned lo = 0, hi = 0;
    auto dash = s->find('-');
    bool ok = dash != std::string::npos;
    if (ok) {
      auto a = std::from_chars(s->data(), s->data() + dash, lo);
      auto b = std::from_chars(s->data() + dash + 1, s->data() + s->size(), hi);
      ok = a.ec == std::errc() && a.ptr == s->data() + dash && b.ec == std::errc() &&
           b.ptr == s->data() + s->size() && lo >= 1 && lo <= hi && hi <= 65535;
    }
    if (!ok)
      c.fail(t.get("port_range"), "vpm.port_range",
             "'" + *s + "' should be LOW-HIGH within 1-65535, like \"20000-29999\"");
    else
      vpm.range_lo = static_cast<uint16_t>(lo), vpm.range_hi = static_cast<uint16_t>(hi);
  }
  if (auto s = c.string(t, "allocation", "vpm.allocation")) {
    if (*s == "per-app")
      vpm.allocation = Allocation::per_app;
    else if (*s == "per-connection")
      vpm.allocation = Allocation::per_connection;
    else
      c.fail(t.get("allocation"), "vpm.allocation",
             "'" + *s + "' must be \"per-app\" or \"per-connection\"");
  }
  if (auto v = c.integer(t, "queue_timeout_ms", "vpm.queue_timeout_ms", 0, 600000))
    vpm.queue_timeout_ms = static_cast<uint32_t>(*v);
  if (auto s = c.string(t, "unmatched", "vpm.unmatched")) vpm.unmatched = *s;
  if (auto s = c.string(t, "control_socket", "vpm.control_socket")) vpm.control_socket = *s;
  if (auto s = c.string(t, "app_socket", "vpm.app_socket")) vpm.app_socket = *s;
  if (auto v = c.integer(t, "max_flows", "vpm.max_flows", 1, 1 << 24))
    vpm.max_flows = static_cast<uint32_t>(*v);
  if (auto v = c.integer(t, "stack_memory_mb", "vpm.stack_memory_mb", 16, 1 << 20))
    vpm.stack_memory_mb = static_cast<uint32_t>(*v);
}

void parse_timeouts(Checker& c, const toml::table& t, Timeouts& to) {
  c.only_keys(
      t, "timeouts",
      {"tcp_established", "tcp_transitory", "tcp_closed", "tcp_handshake", "udp", "udp_unreplied"});
  c.duration(t, "tcp_established", "timeouts.tcp_established", to.tcp_established_ms);
  c.duration(t, "tcp_transitory", "timeouts.tcp_transitory", to.tcp_transitory_ms);
  c.duration(t, "tcp_closed", "timeouts.tcp_closed", to.tcp_closed_ms);
  c.duration(t, "tcp_handshake", "timeouts.tcp_handshake", to.tcp_handshake_ms);
  c.duration(t, "udp", "timeouts.udp", to.udp_ms);
  c.duration(t, "udp_unreplied", "timeouts.udp_unreplied", to.udp_unreplied_ms);
}

// Strings of an array-valued key, each with its node for messages.
std::vector<std::pair<std::string, const toml::node*>> strings(Checker& c, const toml::table& t,
                                                               std::string_view k,
                                                               const std::string& key) {
  std::vector<std::pair<std::string, const toml::node*>> out;
  const toml::node* n = t.get(k);
  if (!n) return out;
  const toml::array* arr = n->as_array();
  if (!arr) {
    c.fail(n, key, "must be an array of strings, like [\"...\"]");
    return out;
  }
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::node* e = arr->get(i);
    if (auto s = e->value_exact<std::string>())
      out.emplace_back(*s, e);
    else
      c.fail(e, key + "[" + std::to_string(i) + "]", "must be a string");
  }
  return out;
}

void parse_app(Checker& c, const toml::table& t, const std::string& where, AppConfig& app) {
  c.only_keys(t, where,
              {"name", "aid", "listen", "clients", "serve", "forward", "proxy_protocol", "users",
               "cooperative", "remote"});
  app.line = static_cast<int>(t.source().begin.line);
  if (auto s = c.string(t, "name", where + ".name")) {
    app.name = *s;
    if (!s->empty() && !name_ok(*s))
      c.fail(t.get("name"), where + ".name",
             "'" + printable(*s) + "': 1 to 64 letters, digits, '.', '-' or '_'");
  }
  if (app.name.empty()) c.fail_line(app.line, where + ".name", "every app needs a non-empty name");
  if (auto v = c.integer(t, "aid", where + ".aid", 0, 0xffffffffll))
    app.aid = static_cast<uint32_t>(*v);
  else if (!t.get("aid"))
    c.fail_line(app.line, where + ".aid", "every app needs an aid (application identifier)");

  for (auto& [text, node] : strings(c, t, "remote", where + ".remote")) {
    std::string why;
    std::string_view body = text;
    if (body.ends_with("/tcp")) body.remove_suffix(4);
    auto ep = body.ends_with("/udp") ? std::nullopt : Endpoint::parse(body, &why);
    if (body.ends_with("/udp"))
      c.fail(node, where + ".remote", "'" + text + "': cooperative mode covers TCP only");
    else if (!ep)
      c.fail(node, where + ".remote", why + " (form: \"10.99.0.10:9000\")");
    else
      app.remote.push_back(*ep);
  }
  bool client_only = t.get("remote") && !t.get("listen");

  auto listens = strings(c, t, "listen", where + ".listen");
  if (listens.empty() && !t.get("listen") && !client_only)
    c.fail_line(app.line, where + ".listen",
                "every app needs at least one listen address, like \"10.99.0.10:9000\", or "
                "remote servers it reaches cooperatively");
  for (size_t i = 0; i < listens.size(); ++i) {
    auto& [text, node] = listens[i];
    std::string key = where + ".listen[" + std::to_string(i) + "]";
    std::string_view body = text;
    ListenSpec spec;
    if (body.ends_with("/udp"))
      spec.proto = Proto::udp, body.remove_suffix(4);
    else if (body.ends_with("/tcp"))
      body.remove_suffix(4);
    std::string why;
    auto ep = Endpoint::parse(body, &why);
    if (!ep) {
      c.fail(node, key, why + " (form: \"10.99.0.10:9000\", \"[fd00:99::10]:9000/udp\")");
      continue;
    }
    spec.at = *ep;
    bool dup = std::any_of(app.listen.begin(), app.listen.end(), [&](const ListenSpec& l) {
      return l.at == spec.at && l.proto == spec.proto;
    });
    if (dup)
      c.fail(node, key, "'" + text + "' is listed twice");
    else
      app.listen.push_back(spec);
  }

  auto clients = strings(c, t, "clients", where + ".clients");
  for (size_t i = 0; i < clients.size(); ++i) {
    auto& [text, node] = clients[i];
    std::string key = where + ".clients[" + std::to_string(i) + "]";
    std::string why;
    ClientRule rule;
    // An exact pair is "a.b.c.d:port" or "[v6]:port"; anything else is a prefix.
    bool pair = text.starts_with("[") ||
                (text.find('.') != std::string::npos && text.find(':') != std::string::npos);
    if (pair) {
      auto ep = Endpoint::parse(text, &why);
      if (!ep)
        c.fail(node, key, why);
      else
        rule.exact = true, rule.pair = *ep, app.clients.push_back(rule);
    } else {
      auto p = Prefix::parse(text, &why);
      if (!p)
        c.fail(node, key,
               why + " (form: \"10.200.1.0/24\", \"10.200.2.7:40000\", \"fd00:200::/64\")");
      else
        rule.prefix = *p, app.clients.push_back(rule);
    }
  }

  if (auto s = c.string(t, "serve", where + ".serve")) {
    if (*s != "echo" && *s != "discard" && *s != "http-info" && *s != "exec")
      c.fail(t.get("serve"), where + ".serve",
             "'" + *s +
                 "' is neither a built-in service (echo, discard, http-info) nor \"exec\" "
                 "(programs run with `vpmtun exec`)");
    app.serve = *s;
  }
  if (auto s = c.string(t, "forward", where + ".forward")) {
    std::string why;
    app.forward = Endpoint::parse(*s, &why);
    if (!app.forward) c.fail(t.get("forward"), where + ".forward", why);
  }
  if (t.get("serve") && t.get("forward"))
    c.fail(t.get("forward"), where, "set either serve or forward, not both");
  else if (client_only && (t.get("serve") || t.get("forward")))
    c.fail(t.get("serve") ? t.get("serve") : t.get("forward"), where,
           "serve and forward need a listen; an app with only remote servers serves nothing");
  else if (!t.get("serve") && !t.get("forward") && !client_only)
    c.fail_line(app.line, where,
                "needs serve = \"echo|discard|http-info|exec\" or forward = \"host:port\"");
  if (auto s = c.string(t, "proxy_protocol", where + ".proxy_protocol")) {
    if (*s != "v2")
      c.fail(t.get("proxy_protocol"), where + ".proxy_protocol", "only \"v2\" is supported");
    else if (!t.get("forward"))
      c.fail(t.get("proxy_protocol"), where + ".proxy_protocol",
             "only applies to a forward endpoint");
    else
      app.proxy_protocol_v2 = true;
  }
  if (auto b = c.boolean(t, "cooperative", where + ".cooperative")) {
    app.cooperative = *b;
    if (*b && client_only)
      c.fail(t.get("cooperative"), where + ".cooperative",
             "applies to an app that listens (the server side)");
    for (auto& l : app.listen)
      if (*b && l.proto == Proto::udp)
        c.fail(t.get("cooperative"), where + ".cooperative",
               "cooperative mode covers TCP only; listen " + l.at.str() +
                   "/udp belongs in an app of its own");
  }
  for (auto& [user, node] : strings(c, t, "users", where + ".users")) {
    if (!runs_programs(app))
      c.fail(node, where + ".users", "only applies to serve = \"exec\" or an app with remote");
    else if (user.empty())
      c.fail(node, where + ".users", "a user name or a numeric uid, not an empty string");
    else
      app.users.push_back(user);
  }
}

std::string listen_str(const ListenSpec& l) { return l.at.str() + "/" + proto_name(l.proto); }

// Checks that need every app: names, unmatched, port ranges, rule conflicts.
void cross_check(Checker& c, const toml::table& root, Config& cfg) {
  std::map<std::string, int> names;
  for (size_t i = 0; i < cfg.apps.size(); ++i) {
    auto& app = cfg.apps[i];
    std::string where = "app[" + std::to_string(i) + "]";
    if (app.name.empty()) continue;
    auto [it, fresh] = names.emplace(app.name, app.line);
    if (!fresh)
      c.fail_line(
          app.line, where + ".name",
          "app '" + app.name + "' is already defined at line " + std::to_string(it->second));
  }
  if (cfg.vpm.unmatched != "reset" && !names.count(cfg.vpm.unmatched)) {
    const toml::node* n = root.at_path("vpm.unmatched").node();
    c.fail(n, "vpm.unmatched",
           "'" + cfg.vpm.unmatched + "' is neither \"reset\" nor the name of an app");
  }

  // p1 must stay outside the hidden range, or a p1 could collide with a p2;
  // and two apps may not claim the same client rule on the same listen,
  // unless they share an AID (one stream: they take its connections in turn).
  std::map<std::pair<std::string, std::string>, const AppConfig*> claims;
  for (size_t i = 0; i < cfg.apps.size(); ++i) {
    auto& app = cfg.apps[i];
    std::string where = "app[" + std::to_string(i) + "]";
    for (auto& l : app.listen) {
      if (l.at.port >= cfg.vpm.range_lo && l.at.port <= cfg.vpm.range_hi)
        c.fail_line(app.line, where + ".listen",
                    listen_str(l) + " uses a port inside vpm.port_range (" +
                        std::to_string(cfg.vpm.range_lo) + "-" + std::to_string(cfg.vpm.range_hi) +
                        "); p1 ports must lie outside the hidden range");
      for (auto& r : app.clients) {
        auto [it, fresh] = claims.emplace(std::make_pair(listen_str(l), r.str()), &app);
        if (!fresh && it->second->aid != app.aid)
          c.fail_line(app.line, where + ".clients",
                      "'" + r.str() + "' on " + listen_str(l) + " is already claimed by app '" +
                          it->second->name + "' (aid " + std::to_string(it->second->aid) +
                          "); apps share client rules only when they share an aid");
      }
    }
  }

  // One AID on one listen is one p2: its apps are all cooperative or none is.
  std::map<std::pair<std::string, uint32_t>, const AppConfig*> streams;
  for (size_t i = 0; i < cfg.apps.size(); ++i) {
    auto& app = cfg.apps[i];
    for (auto& l : app.listen) {
      auto [it, fresh] = streams.emplace(std::make_pair(listen_str(l), app.aid), &app);
      if (!fresh && it->second->cooperative != app.cooperative)
        c.fail_line(app.line, "app[" + std::to_string(i) + "].cooperative",
                    "app '" + it->second->name + "' shares aid " + std::to_string(app.aid) +
                        " on " + listen_str(l) + " and is " +
                        (it->second->cooperative ? "" : "not ") +
                        "cooperative; one stream is cooperative or not as a whole");
    }
  }
  bool cooperates = uses_cooperation(cfg);
  for (size_t i = 0; i < cfg.apps.size(); ++i)
    if (cfg.apps[i].cooperative && cfg.vpm.allocation != Allocation::per_app)
      c.fail_line(cfg.apps[i].line, "app[" + std::to_string(i) + "].cooperative",
                  "needs allocation = \"per-app\": a negotiated p2 must be the app's own");
  if (cooperates && cfg.cooperative.key_file.empty())
    c.fail_line(0, "cooperative.key_file",
                "cooperative mode (cooperative = true, or remote) needs [cooperative] key_file, "
                "a secret of at least 32 bytes that both VPMs share");

  // Capacity of the hidden range per virtual address.
  size_t range = size_t{cfg.vpm.range_hi} - cfg.vpm.range_lo + 1;
  std::map<IpAddr, std::set<std::pair<uint16_t, uint32_t>>> keys;
  for (auto& app : cfg.apps)
    for (auto& l : app.listen) keys[l.at.addr].insert({l.at.port, app.aid});
  for (auto& [addr, set] : keys) {
    std::set<uint16_t> p1s;
    for (auto& k : set) p1s.insert(k.first);
    size_t need = cfg.vpm.allocation == Allocation::per_app ? set.size() : p1s.size();
    // Per-connection slices are split between the workers: each needs a port.
    if (cfg.vpm.allocation == Allocation::per_connection) need *= cfg.tun.queues;
    if (need > range)
      c.fail(root.at_path("vpm.port_range").node(), "vpm.port_range",
             "needs at least " + std::to_string(need) + " ports for " + addr.str() + ", has " +
                 std::to_string(range));
  }
}

}  // namespace

ConfigResult parse_config(std::string_view text, const std::string& file) {
  Checker c(file);
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    return std::vector<ConfigError>{
        {file, static_cast<int>(e.source().begin.line), "", std::string(e.description())}};
  }
  Config cfg;
  cfg.file = file;
  c.only_keys(root, "", {"tun", "vpm", "timeouts", "metrics", "daemon", "cooperative", "app"});
  if (auto t = c.section(root, "tun")) parse_tun(c, *t, cfg.tun);
  cfg.tun.present = root.get("tun") != nullptr;
  if (auto t = c.section(root, "cooperative")) {
    c.only_keys(*t, "cooperative", {"key_file"});
    if (auto s = c.string(*t, "key_file", "cooperative.key_file")) {
      if (s->empty()) c.fail(t->get("key_file"), "cooperative.key_file", "must name a file");
      cfg.cooperative.key_file = *s;
    }
  }
  if (auto t = c.section(root, "vpm")) parse_vpm(c, *t, cfg.vpm);
  if (auto t = c.section(root, "timeouts")) parse_timeouts(c, *t, cfg.timeouts);
  if (auto t = c.section(root, "metrics")) {
    c.only_keys(*t, "metrics", {"listen"});
    if (auto s = c.string(*t, "listen", "metrics.listen")) {
      std::string why;
      cfg.metrics.listen = Endpoint::parse(*s, &why);
      if (!cfg.metrics.listen) c.fail(t->get("listen"), "metrics.listen", why);
    }
  }
  if (auto t = c.section(root, "daemon")) {
    c.only_keys(*t, "daemon", {"user", "name", "on_ready", "on_drain", "on_stop", "hook_timeout"});
    if (auto s = c.string(*t, "user", "daemon.user")) {
      if (s->empty()) c.fail(t->get("user"), "daemon.user", "must not be empty (or leave it out)");
      cfg.daemon.user = *s;
    }
    if (auto s = c.string(*t, "name", "daemon.name")) {
      if (!name_ok(*s))
        c.fail(
            t->get("name"), "daemon.name",
            "'" + printable(*s) + "': 1 to 64 letters, digits, '.', '-' or '_' (or leave it out)");
      cfg.daemon.name = *s;
    }
    for (auto [key, out] : {std::pair{"on_ready", &cfg.daemon.on_ready},
                            {"on_drain", &cfg.daemon.on_drain},
                            {"on_stop", &cfg.daemon.on_stop}})
      if (auto s = c.string(*t, key, std::string("daemon.") + key)) *out = *s;
    c.duration(*t, "hook_timeout", "daemon.hook_timeout", cfg.daemon.hook_timeout_ms);
  }
  if (const toml::node* apps = root.get("app")) {
    const toml::array* arr = apps->as_array();
    if (!arr || !arr->is_array_of_tables())
      c.fail(apps, "app", "must be written as [[app]] tables");
    else
      for (size_t i = 0; i < arr->size(); ++i) {
        AppConfig app;
        parse_app(c, *arr->get(i)->as_table(), "app[" + std::to_string(i) + "]", app);
        cfg.apps.push_back(std::move(app));
      }
  }
  if (cfg.apps.empty() && c.errors.empty())
    c.fail_line(0, "app", "no [[app]] is configured; there is nothing to multiplex");
  if (c.errors.empty()) cross_check(c, root, cfg);
  if (!c.errors.empty()) {
    std::stable_sort(c.errors.begin(), c.errors.end(),
                     [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
    return c.errors;
  }
  cfg.lines = std::move(c.lines);
  return cfg;
}

}  // namespace vpm
