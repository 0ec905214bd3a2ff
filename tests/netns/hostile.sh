#!/usr/bin/env bash
# Hostile traffic against the daemon, with a real client kept in view.
#
#   c1  10.200.1.5  (the attacker) ---- v1 -+
#                                           d: vpmtun run, TUN vpm0 10.99.0.1/24, fd00:99::1/64
#   c2  10.200.2.5  (a real client) --- v2 -+  backends on 127.0.0.1 (a counting one for forward)
#
# Scenes (all by default; name some to run only those):
#   flood     hping3 -S --flood --rand-source at an http-info app and a forward
#             app whose rules claim every source, FLOOD_SECONDS (default 6).
#             The real client must be served during the flood and at once
#             after it; spoofed SYNs must cost no backend connect beyond the
#             bound of pending handshakes; memory stays bounded.
#   memory    [vpm] stack_memory_mb = 128; from c1, 150 connections that each
#             send 8 MiB to echo and never read, then 100 handshakes each
#             followed by 3.6 MB of out-of-order data past a hole never
#             filled (scapy). lwIP's memory stays within the limit, the
#             daemon's RSS within it plus 64 MiB, and c2 is served throughout.
#   malformed MALFORMED (default 20000) fuzzed, truncated and odd packets from c1
#             (tests/netns/malformed.py): the daemon counts its drops and
#             keeps serving c2.
#   burst     BURST (default 19000) TCP connections opened at once to echo
#             (from one client process per 10,000),
#             one byte echoed on each: every byte back within 5 s, no packet
#             dropped at the TUN (stats queue_drops and the kernel agree), and
#             the daemon's memory per open connection measured.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
# KEEP=1 keeps the work directory in /tmp/vpmh-keep.
set -euo pipefail
vpmtun="$(realpath "$1")"
shift
scenes="${*:-malformed flood burst memory}"
source "$(dirname "$0")/common.sh"
skip_unless_netns hostile
d="vpmh$$-d" c1="vpmh$$-c1" c2="vpmh$$-c2"
work="$(mktemp -d)"
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for n in "$d" "$c1" "$c2"; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null; done
  for n in "$d" "$c1" "$c2"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then rm -rf /tmp/vpmh-keep; mv "$work" /tmp/vpmh-keep; else rm -rf "$work"; fi
}
trap cleanup EXIT
router_with_clients "$d" "$c1" "$c2"
# Spoofed sources arrive on v1: no reverse-path filter may drop them first.
in_ns "$d" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.v1.rp_filter=0

cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
stack_memory_mb = ${STACK_MEMORY_MB:-128}
[tun]
queues = ${VPMTUN_TEST_QUEUES:-1}
name = "vpm0"
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
[[app]]
name = "open"
aid = 1
listen = ["10.99.0.10:9000", "[fd00:99::10]:9000"]
clients = ["0.0.0.0/0", "::/0"]
serve = "http-info"
[[app]]
name = "relay"
aid = 2
listen = ["10.99.0.10:8000"]
clients = ["0.0.0.0/0"]
forward = "127.0.0.1:19000"
[[app]]
name = "echo"
aid = 3
listen = ["10.99.0.10:7", "[fd00:99::10]:7"]
clients = ["0.0.0.0/0", "::/0"]
serve = "echo"
TOML
# The forward backend counts the connections it accepts.
cat >"$work/backend.py" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 19000))
s.listen(4096)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    open(sys.argv[1], "w").write(str(n))
    c.sendall(b"backend\n")
    c.close()
PY
in_ns "$d" /usr/bin/python3 "$work/backend.py" "$work/backend.count" >/dev/null 2>&1 &
sock="$work/vpm.sock"
stat_of() { "$vpmtun" stats -s "$sock" --json | /usr/bin/python3 -c "import json,sys; s=json.load(sys.stdin); print(s['$1']['$2'])"; }
rss_kb() {  # the daemon's, with its workers' when it has them
  local p total=0
  for p in "$daemon_pid" $(pgrep -P "$daemon_pid"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# One request from the real client: http-info on :9000, or the forward on :8000.
request() {
  if [ "$1" = 8000 ]; then
    in_ns "$c2" timeout 5 socat -t 3 - TCP:10.99.0.10:8000 </dev/null 2>/dev/null | grep -q '^backend'
  else
    in_ns "$c2" curl -s -m 5 http://10.99.0.10:9000/ | grep -q '"app":"open"'
  fi
}

scene_flood() {
  local secs="${FLOOD_SECONDS:-6}" ok=0 bad=0 after_ok=0 port i k flooders=() workers=()
  local rss0; rss0=$(rss_kb)
  for port in 9000 8000; do
    in_ns "$c1" timeout "$secs" hping3 -q -S --flood --rand-source -p "$port" 10.99.0.10 >/dev/null 2>&1 &
    flooders+=($!)
  done
  sleep 0.5
  # Four real clients ask in turn while the flood lasts.
  for k in 1 2 3 4; do
    (i=$k; while kill -0 "${flooders[0]}" 2>/dev/null; do
       if request $((i++ % 2 ? 8000 : 9000)); then echo ok; else echo bad; fi
     done >"$work/during.$k") &
    workers+=($!)
  done
  wait "${flooders[@]}" "${workers[@]}" 2>/dev/null || true
  ok=$(cat "$work"/during.* | grep -c ok) bad=$(cat "$work"/during.* | grep -c bad || true)
  for i in $(seq 20); do request $((i % 2 ? 8000 : 9000)) && after_ok=$((after_ok + 1)); done
  local sent accepted evicted backend rss
  sent=$(stat_of stack syn_cookies_sent) accepted=$(stat_of stack syn_cookies_accepted)
  evicted=$(stat_of engine evicted_table_full) backend=$(cat "$work/backend.count" 2>/dev/null || echo 0)
  rss=$(rss_kb)
  echo "     flood: $(stat_of tun packets_in) packets in; $sent SYNs answered with cookies, $accepted completed; $evicted unconfirmed flows evicted"
  echo "     real client: $ok of $((ok + bad)) requests served during the flood, $after_ok of 20 right after"
  echo "     forward backend accepted $backend connections; daemon RSS ${rss0} -> ${rss} KiB"
  echo "flood real_during=$ok/$((ok + bad)) real_after=$after_ok/20 packets=$(stat_of tun packets_in) backend=$backend rss_kb=$rss" >>"$work/figures"
  # During: the kernel drops much of the flood at the TUN's full queue, and
  # a request that loses its SYN there three times in a row times out.
  [ "$ok" -ge $(((ok + bad) * 3 / 5)) ] && [ "$after_ok" -eq 20 ] && [ "$sent" -gt 1000 ] &&
    [ "$accepted" -ge 1 ] && [ "$backend" -le $((256 + ok + after_ok + 16)) ] &&
    [ "$rss" -lt $((rss0 + 200 * 1024)) ]
}

scene_burst() {
  # One client process opens at most 10,000 (the file limit may not allow 20,000).
  local n="${BURST:-19000}" rss0 rss rc=0 drops kernel_drops procs k clients=() per
  procs=$(((n + 9999) / 10000))
  per=$((n / procs))
  n=$((per * procs))
  in_ns "$c2" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
  rss0=$(rss_kb)
  drops=$(stat_of tun queue_drops)
  for k in $(seq "$procs"); do
    in_ns "$c2" /usr/bin/python3 "$(dirname "$0")/burst.py" 10.99.0.10 7 "$per" 5 4 >"$work/burst.$k" 2>&1 &
    clients+=($!)
  done
  for _ in $(seq 150); do [ "$(cat "$work"/burst.* | grep -c holding)" -eq "$procs" ] && break; sleep 0.1; done
  rss=$(rss_kb)
  local open; open=$(stat_of stack tcp_open)
  for k in "${clients[@]}"; do wait "$k" || rc=1; done
  drops=$(($(stat_of tun queue_drops) - drops))
  kernel_drops=$(ip -n "$d" -s link show vpm0 | awk '/TX:/ {getline; print $4}')
  local per_conn=$(((rss - rss0) * 1024 / (open > 0 ? open : 1)))
  grep -h '^burst' "$work"/burst.* | sed 's/^/     /'
  echo "     TUN queue drops: $drops (kernel: $kernel_drops in all); daemon RSS ${rss0} -> ${rss} KiB with $open connections open: $per_conn bytes each"
  echo "burst connections=$n $(grep -h '^burst' "$work"/burst.* | cut -d' ' -f2- | paste -sd'|') queue_drops=$drops rss_per_conn_bytes=$per_conn" >>"$work/figures"
  [ "$rc" -eq 0 ] && [ "$drops" -eq 0 ] && [ "$open" -ge $((n * 9 / 10)) ]
}

served() {  # c2 gets http-info, and 2 MB echoed intact
  head -c 2000000 /dev/urandom >"$work/blob"
  in_ns "$c2" curl -s -m 10 http://10.99.0.10:9000/ | grep -q '"app":"open"' ||
    { echo "     c2: no http-info answer"; return 1; }
  in_ns "$c2" timeout 30 socat -t 20 - TCP:10.99.0.10:7 <"$work/blob" >"$work/echoed" || true
  cmp -s "$work/blob" "$work/echoed" ||
    { echo "     c2: $(stat -c %s "$work/echoed") of 2000000 bytes echoed"; return 1; }
}

scene_malformed() {
  local n="${MALFORMED:-20000}" before after
  before=$(stat_of engine dropped)
  in_ns "$c1" /usr/bin/python3 "$(dirname "$0")/malformed.py" 10.99.0.10 fd00:99::10 "$n" "${SEED:-1}" >"$work/malformed.out" 2>&1 || { cat "$work/malformed.out"; return 1; }
  sleep 1
  after=$(stat_of engine dropped)
  "$vpmtun" stats -s "$sock" --json | /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin)['drops']; print('     drops by reason: ' + ', '.join(f'{k} {v}' for k, v in d.items() if v))"
  echo "     $(cat "$work/malformed.out"); engine dropped $((after - before)); stack input errors $(stat_of stack input_errors)"
  echo "malformed sent=$n dropped=$((after - before))" >>"$work/figures"
  [ "$after" -gt "$before" ] && served
}

scene_memory() {
  local rss0 rc=0 mem limit rss1 rss2 mem1 mem2 served1=yes served2=yes
  rss0=$(rss_kb)
  limit=$(stat_of stack memory_limit_bytes)
  in_ns "$c1" /usr/bin/python3 "$(dirname "$0")/hostile_client.py" unread 10.99.0.10 7 150 8 8 >"$work/unread.out" 2>&1 &
  local client=$!
  for _ in $(seq 300); do grep -q '^unread:' "$work/unread.out" && break; sleep 0.1; done
  rss1=$(rss_kb) mem1=$(stat_of stack memory_bytes)
  served || served1=no
  wait "$client" || rc=1
  # Raw handshakes: the client's kernel knows nothing of them and must not reset them.
  in_ns "$c1" nft add table inet hostile
  in_ns "$c1" nft add chain inet hostile out '{ type filter hook output priority 0; }'
  in_ns "$c1" nft add rule inet hostile out tcp flags rst drop
  ip -n "$c1" link set eth0 mtu 65000; ip -n "$d" link set v1 mtu 65000
  in_ns "$c1" /usr/bin/python3 "$(dirname "$0")/hostile_client.py" ooseq 10.99.0.10 7 100 >"$work/ooseq.out" 2>&1 || rc=1
  rss2=$(rss_kb) mem2=$(stat_of stack memory_bytes)
  served || served2=no
  echo "     $(cat "$work/unread.out"): lwIP memory $((mem1 >> 20)) MiB of $((limit >> 20)); RSS ${rss0} -> ${rss1} KiB; c2 served: $served1"
  echo "     $(tail -1 "$work/ooseq.out"): lwIP memory $((mem2 >> 20)) MiB; RSS ${rss2} KiB; c2 served: $served2"
  echo "     refused allocations $(stat_of stack memory_refusals), deferred deliveries $(stat_of stack memory_deferrals)"
  echo "memory unread_rss_kb=$rss1 ooseq_rss_kb=$rss2 lwip_unread=$mem1 lwip_ooseq=$mem2 limit=$limit" >>"$work/figures"
  [ "$rc" -eq 0 ] && [ "$served1" = yes ] && [ "$served2" = yes ] &&
    [ "$mem1" -le "$limit" ] && [ "$mem2" -le "$limit" ] &&
    [ "$rss1" -lt $((rss0 + (limit >> 10) + 65536)) ] && [ "$rss2" -lt $((rss0 + (limit >> 10) + 65536)) ]
}

broken=0
for scene in $scenes; do
  # Each scene meets a daemon of its own: what one leaves behind (a table
  # full of a flood's flows, SYN cookies still out) is not the next one's test.
  if [ -n "$daemon_pid" ]; then
    grep -q 'lwIP assertion' "$work/daemon.log" && broken=1
    kill "$daemon_pid" 2>/dev/null || broken=1  # it died during the scene
    wait "$daemon_pid" || true
  fi
  start_vpmtun "$d" "$work/daemon.log" "$work/vpm.toml"
  check "$scene" "scene_$scene"
done
check "no lwIP assertion, the daemon still up" bash -c "kill -0 $daemon_pid && [ $broken = 0 ] && ! grep -q 'lwIP assertion' '$work/daemon.log'"
[ -f "$work/figures" ] && sed 's/^/figures: /' "$work/figures"
[ "$fail" -eq 0 ] || { echo "--- daemon log"; tail -20 "$work/daemon.log"; }
echo "hostile: $fail failed"
[ "$fail" -eq 0 ]
