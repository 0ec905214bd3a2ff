#!/usr/bin/env bash
# End-to-end benchmark: one TCP stream, and short connections, through each
# way of putting a service behind a port, measured in the same run. A script,
# not a test. Needs root; everything happens in two namespaces made here.
#
#   c  10.201.0.2/24 ---- veth (MTU $MTU) ----- s  10.201.0.1/24
#      routes 10.99.0.0/24 via s                   iperf3 -s on :5201 (the backend)
#                                                  vpmtun-bench serve on :5300
#                                                  nft: :9000 redirect to :5201
#                                                  HAProxy mode tcp, src ACL: :9001, :9003
#                                                  vpmtun: TUN vpmb0, 10.99.0.10:
#                                                    9000 forward -> 127.0.0.1:5201
#                                                    9002 discard
#                                                    9003 forward -> 127.0.0.1:5300
#
#   tools/bench/e2e.sh [BUILD_DIR] [SECONDS] [RUNS]   (defaults: build-bench, 5, 3)
#   MTU=65520 tools/bench/e2e.sh ...                  clients on the same host (veth MTU)
#   LOSS=1 tools/bench/e2e.sh ...                     1% of packets lost each way on s's
#                                                     link to the client (nft numgen; 0.1 too),
#                                                     as s forwards them: a TSO or TUN segment
#                                                     of 64 KiB is one packet there
#   LOSS=1 LOSS_AT=wire tools/bench/e2e.sh ...        the same per packet of the link's MTU: a
#                                                     namespace m between c and s forwards and
#                                                     drops; c and s do not offload segmentation
#                                                     towards it
#   STREAMS_ONLY=1 tools/bench/e2e.sh ...             one stream each way through HAProxy and
#                                                     one worker, nothing else (tools/bench/loss.sh)
#   SHORT_ONLY=1 tools/bench/e2e.sh ...               short connections only: direct, HAProxy,
#                                                     vpmtun with one worker and with two
#
# vpmtun runs twice: with one worker ([tun] queues = 1), then with two
# (queues = 2, one per core here). Every figure is the median of RUNS runs of
# SECONDS each; ratios are against the kernel's own path (direct) and
# HAProxy; "many streams" is iperf3 -P 4, whose scaling from one worker to
# two is printed against linear (2x).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-bench}"
secs="${2:-5}"
runs="${3:-3}"
mtu="${MTU:-1500}"
loss="${LOSS:-0}"  # percent, each way
loss_at="${LOSS_AT:-router}"  # router: as s forwards (a large segment is one packet); wire: per MTU packet
streams_only="${STREAMS_ONLY:-0}"
short_only="${SHORT_ONLY:-0}"
[ "$(id -u)" -eq 0 ] || { echo "e2e.sh: needs root (network namespaces)" >&2; exit 1; }
for t in iperf3 haproxy nft socat ethtool; do
  command -v "$t" >/dev/null || { echo "e2e.sh: $t missing (tools/install-deps)" >&2; exit 1; }
done
if [ ! -x "$build/tools/vpmtun" ] || [ ! -x "$build/tools/bench/vpmtun-bench" ]; then
  "$root/tools/install-deps" "$build" >/dev/null
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVPMTUN_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target vpmtun vpmtun-bench >/dev/null
fi
vpmtun="$build/tools/vpmtun" bench="$build/tools/bench/vpmtun-bench"

c="vpmb$$-c" s="vpmb$$-s" m="vpmb$$-m"
work="$(mktemp -d)"
cleanup() {
  ip netns pids "$s" 2>/dev/null | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
  sleep 0.5
  for ns in "$c" "$s" "$m"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
in_s() { ip netns exec "$s" "$@"; }
in_c() { ip netns exec "$c" "$@"; }

ip netns add "$c"; ip netns add "$s"
ip -n "$c" link set lo up; ip -n "$s" link set lo up
if [ "$loss" != 0 ] && [ "$loss_at" = wire ]; then
  # A lossy network m between c and s, which drops packet by packet what it
  # forwards: nobody offloads segmentation towards it. What reaches s comes
  # packet by packet too (veth gathers no trains), also into the TUN.
  # s keeps 10.201.0.1.
  ip netns add "$m"
  ip -n "$m" link set lo up
  ip -n "$m" link add eth0 type veth peer name eth0 netns "$c"
  ip -n "$m" link add eth1 type veth peer name eth0 netns "$s"
  ip -n "$c" addr add 10.201.0.2/24 dev eth0; ip -n "$m" addr add 10.201.0.254/24 dev eth0
  ip -n "$m" addr add 10.202.0.1/24 dev eth1; ip -n "$s" addr add 10.202.0.2/24 dev eth0
  ip -n "$s" addr add 10.201.0.1/32 dev lo
  for link in "$c eth0" "$m eth0" "$m eth1" "$s eth0"; do
    set -- $link
    ip -n "$1" link set "$2" mtu "$mtu" up
  done
  ip -n "$c" route add 10.201.0.1/32 via 10.201.0.254
  ip -n "$c" route add 10.99.0.0/24 via 10.201.0.254
  ip -n "$m" route add 10.201.0.1/32 via 10.202.0.2
  ip -n "$m" route add 10.99.0.0/24 via 10.202.0.2
  ip -n "$s" route add 10.201.0.0/24 via 10.202.0.1
  ip netns exec "$m" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$c" ethtool -K eth0 tso off gso off >/dev/null
  ip netns exec "$s" ethtool -K eth0 tso off gso off >/dev/null
  ip netns exec "$m" nft -f - <<NFT
table inet loss {
  chain drops { type filter hook forward priority 0; numgen random mod 1000 < $(awk -v l="$loss" 'BEGIN { printf "%d", l * 10 }') drop; }
}
NFT
else
  ip -n "$s" link add eth0 type veth peer name eth0 netns "$c"
  ip -n "$s" addr add 10.201.0.1/24 dev eth0; ip -n "$c" addr add 10.201.0.2/24 dev eth0
  ip -n "$s" link set eth0 mtu "$mtu" up; ip -n "$c" link set eth0 mtu "$mtu" up
  ip -n "$c" route add 10.99.0.0/24 via 10.201.0.1
fi
in_s sysctl -qw net.ipv4.ip_forward=1

in_s nft -f - <<'NFT'
table ip bench {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr 10.201.0.1 tcp dport 9000 redirect to :5201
  }
}
NFT
if [ "$loss" != 0 ] && [ "$loss_at" = router ]; then
  permille=$(awk -v l="$loss" 'BEGIN { printf "%d", l * 10 }')
  in_s nft -f - <<NFT
table inet loss {
  chain in { type filter hook prerouting priority -300; iifname "eth0" numgen random mod 1000 < $permille drop; }
  chain out { type filter hook postrouting priority 300; oifname "eth0" numgen random mod 1000 < $permille drop; }
}
NFT
fi
cat >"$work/haproxy.cfg" <<'CFG'
global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend stream
  bind 10.201.0.1:9001
  acl clients src 10.201.0.0/24
  tcp-request connection reject if !clients
  default_backend iperf
frontend short
  bind 10.201.0.1:9003
  acl clients src 10.201.0.0/24
  tcp-request connection reject if !clients
  default_backend short
backend iperf
  server b 127.0.0.1:5201
backend short
  server b 127.0.0.1:5300
CFG
write_vpm_config() {  # write_vpm_config QUEUES
cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[tun]
name = "vpmb0"
address = "10.99.0.1/24"
queues = $1
[[app]]
name = "iperf"
aid = 1
listen = ["10.99.0.10:9000"]
clients = ["10.201.0.0/24"]
forward = "127.0.0.1:5201"
[[app]]
name = "sink"
aid = 2
listen = ["10.99.0.10:9002"]
clients = ["10.201.0.0/24"]
serve = "discard"
[[app]]
name = "short"
aid = 3
listen = ["10.99.0.10:9003"]
clients = ["10.201.0.0/24"]
forward = "127.0.0.1:5300"
TOML
}

# Servers are started without the in_s function: a backgrounded function
# would wait in a subshell and report "Terminated" when cleanup kills them.
ip netns exec "$s" iperf3 -s -p 5201 >/dev/null 2>&1 &
ip netns exec "$s" "$bench" serve 0.0.0.0:5300 &
ip netns exec "$s" haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" &
vpmtun_pid=""
start_vpmtun() {  # start_vpmtun QUEUES
  write_vpm_config "$1"
  ip netns exec "$s" "$vpmtun" run -c "$work/vpm.toml" 2>>"$work/vpmtun.log" &
  vpmtun_pid=$!
  for _ in $(seq 50); do ip -n "$s" route show 10.99.0.0/24 | grep -q vpmb0 && break; sleep 0.1; done
  sleep 1
}
stop_vpmtun() { kill "$vpmtun_pid"; wait "$vpmtun_pid" || true; }
sleep 1

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
iperf_gbps() {  # iperf_gbps HOST PORT [iperf3 options]: receiver Gbit/s, median of $runs
  for _ in $(seq "$runs"); do
    in_c iperf3 -c "$1" -p "$2" -t "$secs" -J "${@:3}" |
      /usr/bin/python3 -c 'import json,sys; r = json.load(sys.stdin); print(r["end"]["sum_received"]["bits_per_second"] / 1e9 if "sum_received" in r.get("end", {}) else sys.exit("iperf3: " + r.get("error", "no result")))'
  done | median
}
sink_gbps() {  # sink_gbps HOST PORT: one stream of zeros into a discard endpoint
  local bytes=$((secs * 500000000))
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    head -c "$bytes" /dev/zero | in_c socat -u -b 262144 - "TCP:$1:$2"
    t1=$(date +%s%N)
    echo "$bytes $t0 $t1" | awk '{ print $1 * 8 / ($3 - $2) }'
  done | median
}
conn_rate() {  # conn_rate HOST PORT: short connections per second, 32 in flight
  for _ in $(seq "$runs"); do
    { in_c "$bench" connect "$1:$2" "$secs" 32 || true; } | tee -a "$work/connect.log" | awk '{ print $1 }'
  done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "e2e: $(nproc) cores, $(date -u +%FT%TZ), median of $runs runs of $secs s, client MTU $mtu, loss $loss% each way$([ "$loss" = 0 ] || echo " (at the $loss_at)")"
[ "$short_only" = 1 ] ||
  printf "%-34s %10s %10s %9s %9s\n" "single TCP stream" "up Gbit/s" "down" "vs kernel" "vs HAProxy"
declare -A up down many_up many_down rate
measure() {  # measure LABEL HOST PORT: one stream each way, then four
  up[$1]=$(iperf_gbps "$2" "$3")
  down[$1]=$(iperf_gbps "$2" "$3" -R)
  [ "$streams_only" = 1 ] && return
  many_up[$1]=$(iperf_gbps "$2" "$3" -P 4)
  many_down[$1]=$(iperf_gbps "$2" "$3" -P 4 -R)
}
row() {  # row LABEL KEY [UP-ARRAY DOWN-ARRAY]: Gbit/s and ratios
  local -n u="${3:-up}" d="${4:-down}"
  printf "%-34s %10.2f %10.2f %4s/%-4s %4s/%-4s\n" "$1" "${u[$2]}" "${d[$2]}" \
    "$(ratio "${u[$2]}" "${u[kernel]}")" "$(ratio "${d[$2]}" "${d[kernel]}")" \
    "$(ratio "${u[$2]}" "${u[haproxy]}")" "$(ratio "${d[$2]}" "${d[haproxy]}")"
}
if [ "$streams_only" = 1 ]; then
  up[kernel]=0 down[kernel]=0  # not measured: those ratios print "-"
  measure haproxy 10.201.0.1 9001
  start_vpmtun 1
  measure vpmtun1 10.99.0.10 9000
  stop_vpmtun
  row "HAProxy mode tcp, src ACL" haproxy
  row "vpmtun forward, 1 worker" vpmtun1
  grep -iE "assert|error" "$work/vpmtun.log" || true
  exit 0
fi
short_rows() {
  printf "%-34s %10s %9s\n" "short connections (32 in flight)" "conn/s" "vs HAProxy"
  printf "%-34s %10.0f %9s\n" "kernel direct" "${rate[direct]}" "$(ratio "${rate[direct]}" "${rate[haproxy]}")"
  printf "%-34s %10.0f %9s\n" "HAProxy mode tcp" "${rate[haproxy]}" "1.00"
  printf "%-34s %10.0f %9s\n" "vpmtun forward, 1 worker" "${rate[vpmtun1]}" "$(ratio "${rate[vpmtun1]}" "${rate[haproxy]}")"
  printf "%-34s %10.0f %9s\n" "vpmtun forward, 2 workers" "${rate[vpmtun2]}" "$(ratio "${rate[vpmtun2]}" "${rate[haproxy]}")"
  grep -v " 0 failed" "$work/connect.log" | sed "s/^/failures: /" || true
  grep -iE "assert|error" "$work/vpmtun.log" || true
}
if [ "$short_only" != 1 ]; then
  measure kernel 10.201.0.1 5201
  measure nft 10.201.0.1 9000
  measure haproxy 10.201.0.1 9001
fi
rate[direct]=$(conn_rate 10.201.0.1 5300)
rate[haproxy]=$(conn_rate 10.201.0.1 9003)
for q in 1 2; do
  start_vpmtun "$q"
  if [ "$short_only" != 1 ]; then
    measure "vpmtun$q" 10.99.0.10 9000
    [ "$q" -eq 1 ] && sink=$(sink_gbps 10.99.0.10 9002)
  fi
  rate[vpmtun$q]=$(conn_rate 10.99.0.10 9003)
  stop_vpmtun
done
if [ "$short_only" = 1 ]; then
  short_rows
  exit 0
fi
row "kernel direct" kernel
row "nft redirect 9000 -> 5201" nft
row "HAProxy mode tcp, src ACL" haproxy
row "vpmtun forward, 1 worker" vpmtun1
row "vpmtun forward, 2 workers" vpmtun2
printf "%-34s %10.2f %10s %4s\n" "vpmtun built-in discard (socat)" "$sink" "-" "$(ratio "$sink" "${up[kernel]}")"

echo
printf "%-34s %10s %10s %9s %9s\n" "many streams (iperf3 -P 4)" "up Gbit/s" "down" "vs kernel" "vs HAProxy"
many_row() { row "$1" "$2" many_up many_down; }
many_row "kernel direct" kernel
many_row "HAProxy mode tcp, src ACL" haproxy
many_row "vpmtun forward, 1 worker" vpmtun1
many_row "vpmtun forward, 2 workers" vpmtun2
scaling() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / (2 * b); else print "-" }'; }
echo "2 workers against 1, of linear: up $(scaling "${many_up[vpmtun2]}" "${many_up[vpmtun1]}"), down $(scaling "${many_down[vpmtun2]}" "${many_down[vpmtun1]}")"

echo
short_rows
