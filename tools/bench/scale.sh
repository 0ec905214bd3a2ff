#!/usr/bin/env bash
# The scale of state: how much memory each held TCP connection costs the
# daemon. A script, not a test. Needs root; everything happens in two
# namespaces made here.
#
#   tools/bench/scale.sh [BUILD_DIR] [CONNECTIONS]     (defaults: build-bench, 100000)
#
#   c  10.200.1.5 + 10.201.0.1-16 ---- veth ---- d  vpmtun run: TUN vpm0,
#      hold.py: CONNECTIONS to 10.99.0.10:7000      10.99.0.10:7000 echo
#
# Reports the daemon's RSS (VmRSS) before and with the connections held, the
# memory the embedded stack has in use (`vpmtun stats`: stack memory_bytes,
# the lwIP buffers), and per connection: all of the RSS growth, and what is
# left of it beyond the stack's memory (the flow table, the connection
# objects, their index). While they are held, a new client must still be
# answered.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-bench}"
count="${2:-100000}"
[ "$(id -u)" -eq 0 ] || { echo "scale.sh: needs root (network namespaces)" >&2; exit 1; }
if [ ! -x "$build/tools/vpmtun" ]; then
  "$root/tools/install-deps" "$build" >/dev/null
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVPMTUN_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target vpmtun >/dev/null
fi
vpmtun="$(realpath "$build/tools/vpmtun")"
source "$root/tests/netns/common.sh"
d="vpmsc$$-d" c="vpmsc$$-c"
work="$(mktemp -d)"
daemon_pid="" holder=""
cleanup() {
  for p in $holder $daemon_pid; do kill "$p" 2>/dev/null || true; done
  for n in "$d" "$c"; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in "$d" "$c"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c"
sources=()
for i in $(seq 1 16); do ip -n "$c" addr add "10.201.0.$i/32" dev eth0; sources+=("10.201.0.$i"); done
ip -n "$d" route add 10.201.0.0/24 via 10.200.1.5
in_ns "$c" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"

cat >"$work/scale.toml" <<TOML
[vpm]
control_socket = "$work/vpmtun.sock"
max_flows = $((count * 2 + 1000))
[tun]
name = "vpm0"
address = "10.99.0.1/24"
queues = 1  # one process, whose RSS is read
[[app]]
name = "hold"
aid = 1
listen = ["10.99.0.10:7000", "10.99.0.10:80"]
clients = ["0.0.0.0/0"]
serve = "echo"
TOML
start_vpmtun "$d" "$work/daemon.log" "$work/scale.toml"
disown "$daemon_pid"  # killed at the end: no job notice
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$daemon_pid/status"; }  # KiB
stat_of() {  # stat_of GROUP NAME
  in_ns "$d" "$vpmtun" stats --json -s "$work/vpmtun.sock" |
    /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)['$1']['$2'])"
}
sleep 1
rss0=$(rss) mem0=$(stat_of stack memory_bytes)

# A process may hold only as many descriptors as its limit allows (the hard
# limit may be low and fixed): the connections are shared among holders.
per=$(( $(ulimit -Hn) - 1000 ))
holders=()
for ((at = 0, j = 0; at < count; at += per, j++)); do
  n=$(( count - at < per ? count - at : per ))
  (ulimit -n "$(ulimit -Hn)"; exec ip netns exec "$c" /usr/bin/python3 "$root/tools/bench/hold.py" \
    10.99.0.10 7000 "$n" "$work/stop" "${sources[@]}") >"$work/hold.$j" 2>&1 &
  holders+=($!)
done
holder="${holders[*]}"
for j in "${!holders[@]}"; do
  until grep -q '^held' "$work/hold.$j" 2>/dev/null; do
    kill -0 "${holders[j]}" 2>/dev/null || { cat "$work/hold.$j"; exit 1; }
    sleep 1
  done
  echo "holder $j: $(head -2 "$work/hold.$j" | paste -sd' ')"
done
sleep 2
rss1=$(rss) mem1=$(stat_of stack memory_bytes) open=$(stat_of stack tcp_open) flows=$(stat_of engine flows)
t0=$(date +%s.%N)
answer=$(in_ns "$c" /usr/bin/python3 -c '
import socket; s = socket.create_connection(("10.99.0.10", 80), 5); s.sendall(b"new"); print(s.recv(3).decode())' || true)
t1=$(date +%s.%N)
touch "$work/stop"
for j in "${!holders[@]}"; do wait "${holders[j]}" || true; echo "holder $j: $(tail -1 "$work/hold.$j")"; done
awk -v r0="$rss0" -v r1="$rss1" -v m0="$mem0" -v m1="$mem1" -v n="$open" -v f="$flows" \
    -v a="$answer" -v t="$(echo "$t1 - $t0" | bc -l 2>/dev/null || echo 0)" 'BEGIN {
  printf "connections open in the daemon: %d (engine flows %d)\n", n, f
  printf "daemon RSS: %.1f MiB before, %.1f MiB with them held\n", r0 / 1024, r1 / 1024
  printf "stack memory (lwIP buffers in use): %.1f MiB before, %.1f MiB with them held\n", m0 / 1048576, m1 / 1048576
  printf "per connection: %.0f bytes of RSS, %.0f bytes beyond the stack memory in use\n", (r1 - r0) * 1024 / n, ((r1 - r0) * 1024 - (m1 - m0)) / n
  printf "a new client while they are held: %s\n", a == "new" ? "answered" : "NOT answered"
}'
