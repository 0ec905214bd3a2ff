// The configurator: vpmtun's TOML configuration, parsed and validated.
//
// Every error names the file, the line and the key, and all errors in a file
// are reported together so one run of `vpmtun check` shows everything to fix.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "vpm/address.hpp"

namespace vpm {

enum class Allocation : uint8_t { per_app, per_connection };

inline constexpr uint32_t kMaxQueues = 16;  // [tun] queues

struct TunConfig {
  // False when the file has no [tun] section: the daemon then runs only the
  // client side of cooperative mode (the library socket and negotiation).
  bool present = true;
  std::string name = "tun0";
  uint32_t mtu = 65520;
  std::optional<Prefix> address;  // kernel side of the TUN, e.g. 10.99.0.1/24
  std::optional<Prefix> address6;
  bool configure = true;
  bool offload = true;  // TSO and checksum offload with the kernel (virtio-net headers)
  // Packets the kernel may queue for us to read. Its default (500-1000) is
  // sized for a NIC that drains at line rate; a userspace reader can be
  // busy for milliseconds, and a burst of 19,000 connections overflowed it.
  uint32_t txqueuelen = 40000;
  // Queues of the device (IFF_MULTI_QUEUE), one worker process each, every
  // one with its own engine and embedded stack (tun/supervisor.hpp).
  uint32_t queues = 1;
  // queues = "auto", the default: one per core, as auto_queues() finds
  // (tun::read_config sets `queues` so).
  bool queues_auto = true;
};

struct VpmConfig {
  uint16_t range_lo = 20000;
  uint16_t range_hi = 29999;
  Allocation allocation = Allocation::per_app;
  uint32_t queue_timeout_ms = 2000;
  std::string unmatched = "reset";  // or an app name
  std::string control_socket = "/run/vpmtun.sock";
  // Where the application library of `vpmtun exec` registers instances;
  // empty: beside the control socket (library_socket_path()).
  std::string app_socket;
  uint32_t max_flows = 65536;
  uint32_t stack_memory_mb = 1024;  // what the embedded stack may allocate (stack_memory.hpp)
};

// Idle timeouts in milliseconds. Defaults are the RFC 5382 (TCP) and
// RFC 4787 (UDP) recommendations; tcp_closed is our own linger after both
// FINs or a RST, long enough for the last ACK and retransmitted FINs.
// tcp_handshake and udp_unreplied are for flows anyone can make with a
// spoofed source (see vpm::unconfirmed): a handshake not completed, a UDP
// flow never answered (conntrack's 30 s). A client still trying resets the
// clock with each retransmission.
struct Timeouts {
  uint64_t tcp_established_ms = (2 * 3600 + 4 * 60) * 1000ull;
  uint64_t tcp_transitory_ms = 4 * 60 * 1000ull;
  uint64_t tcp_closed_ms = 10 * 1000ull;
  uint64_t tcp_handshake_ms = 10 * 1000ull;
  uint64_t udp_ms = 5 * 60 * 1000ull;
  uint64_t udp_unreplied_ms = 30 * 1000ull;
  bool operator==(const Timeouts&) const = default;
};

struct ListenSpec {
  Endpoint at;
  Proto proto = Proto::tcp;
};

// A client rule: a prefix (a bare address is a one-host prefix) or an exact address:port.
struct ClientRule {
  bool exact = false;
  Prefix prefix;
  Endpoint pair;
  std::string str() const { return exact ? pair.str() : prefix.str(); }
};

struct AppConfig {
  std::string name;
  uint32_t aid = 0;
  std::vector<ListenSpec> listen;
  std::vector<ClientRule> clients;
  std::string serve;  // echo | discard | http-info, or "exec": programs under `vpmtun exec`
  std::optional<Endpoint> forward;  // or a real backend
  bool proxy_protocol_v2 = false;
  // exec: who may run instances (user names or numeric uids); empty: the
  // daemon's user and root.
  std::vector<std::string> users;
  // Cooperative mode (DESIGN.md). Server side: clients come only through
  // their own VPM's negotiation on p1, and their data on p2.
  bool cooperative = false;
  // Client side: the servers the app's programs reach cooperatively
  // (vaddr:p1, TCP); `aid` is their identity there.
  std::vector<Endpoint> remote;
  int line = 0;  // where [[app]] starts, for later messages
  // Set by a reload for an app the new file removed or changed while it had
  // flows: it serves those until they end, and no client rule leads to it.
  bool draining = false;
};

struct MetricsConfig {
  std::optional<Endpoint> listen;  // Prometheus exposition at http://listen/metrics
};

// What the daemon tells the routing layer (README "Running several nodes"):
// each hook is a command line for /bin/sh -c, run with VPMTUN_STATE,
// VPMTUN_NAME, VPMTUN_DEVICE, VPMTUN_PREFIXES and VPMTUN_CONFIG set, one at
// a time, killed after hook_timeout_ms. Empty: none.
struct DaemonConfig {
  std::string user;      // drop to this user once set up; empty: stay root
  std::string name;      // this node, for hooks and http-info; empty: the host name
  std::string on_ready;  // once the daemon serves (announce the prefix)
  std::string on_drain;  // on SIGTERM, before the listeners close (withdraw it)
  std::string on_stop;   // after the last connection, before the TUN goes
  uint64_t hook_timeout_ms = 10000;
};

struct CoopConfig {
  std::string key_file;  // the secret both VPMs share (tun/coop_key.hpp reads it)
};

struct Config {
  std::string file;
  TunConfig tun;
  VpmConfig vpm;
  Timeouts timeouts;
  MetricsConfig metrics;
  DaemonConfig daemon;
  CoopConfig cooperative;
  std::vector<AppConfig> apps;
  std::map<std::string, int> lines;  // the line of each key set in the file, e.g. "tun.mtu"
};

// Whether an app is run by programs under `vpmtun exec`: it serves through
// them (serve = "exec") or its programs reach servers cooperatively.
bool runs_programs(const AppConfig& app);
bool uses_cooperation(const Config& cfg);
// What queues = "auto" means with `cores` cores: one worker each (at most
// kMaxQueues), and no more than every per-connection slice can give each a
// port.
uint32_t auto_queues(const Config& cfg, unsigned cores);

// The application library's socket: [vpm] app_socket, or the control
// socket's path with "-app" before its ".sock" ("/run/vpmtun-app.sock").
std::string app_socket_path(const VpmConfig& vpm);

struct ConfigError {
  std::string file;
  int line = 0;     // 0 when the problem has no single line (e.g. a missing section)
  std::string key;  // dotted path, e.g. "app[1].clients[0]"
  std::string message;
  std::string str() const;
};

using ConfigResult = std::variant<Config, std::vector<ConfigError>>;

// An app's or the [daemon]'s name: 1 to 64 letters, digits, '.', '-' or
// '_'. Names go as they are into JSON, metrics labels, the control
// socket's lines and words (`table app=NAME`) and the environment of hooks.
bool name_ok(std::string_view name);

// Parses and validates configuration text. `file` is only used in messages.
// Cross-app checks (duplicate rules, port ranges) are done here too, so a
// Config that comes back is one the engine accepts.
ConfigResult parse_config(std::string_view text, const std::string& file);

// "2h4m", "90s", "500ms", "1h30m15s" -> milliseconds.
std::optional<uint64_t> parse_duration(std::string_view text);

}  // namespace vpm
