#!/usr/bin/env bash
# What cooperative mode costs a new connection: connections per second
# through the same server daemon, cooperative (the client's VPM negotiates
# first) against non-cooperative, measured in turn in the same run. A
# script, not a test. Needs root; everything happens in two namespaces
# made here.
#
#   c  10.202.0.2/24 ---- veth ----- s  10.202.0.1/24
#      vpmtun run (no [tun]): app         vpmtun run: TUN vpmq0, 10.99.0.10:
#      "cli", aid 1, remote 9000            9000 forward -> 127.0.0.1:19000, cooperative (aid 1)
#      vpmtun exec --app cli --            8000 forward -> 127.0.0.1:19000 (aid 2, plain)
#        vpmtun-bench connect ...         vpmtun-bench serve 127.0.0.1:19000
#
#   tools/bench/coop.sh [BUILD_DIR] [SECONDS] [RUNS] [CLIENTS]   (defaults: build-bench, 5, 5, 16)
#
# CLIENTS programs at once, each making one connection after another
# (connect, read "ok", close): the same program under `vpmtun exec` both
# times (a connection to 8000 is not one of its app's remotes: the library
# passes it through). A cooperative connect() negotiates before it returns,
# so each program has one negotiation in flight at most, as a program with
# blocking connects has. The extra cost of a cooperative connection is one
# round trip to the server's VPM (Ask, Offer), the Ack, and the program's
# exchange with its own daemon; figures are medians.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-bench}"
secs="${2:-5}"
runs="${3:-5}"
clients="${4:-16}"
[ "$(id -u)" -eq 0 ] || { echo "coop.sh: needs root (network namespaces)" >&2; exit 1; }
if [ ! -x "$build/tools/vpmtun" ] || [ ! -e "$build/tools/vpmtun-app/libvpmtun-app.so" ] ||
   [ ! -x "$build/tools/bench/vpmtun-bench" ]; then
  "$root/tools/install-deps" "$build" >/dev/null
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVPMTUN_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target vpmtun vpmtun-app vpmtun-bench >/dev/null
fi
vpmtun="$build/tools/vpmtun"
bench="$build/tools/bench/vpmtun-bench"

c="vpmqb$$-c" s="vpmqb$$-s"
work="$(mktemp -d)"
chmod 755 "$work"
cleanup() {
  for n in "$c" "$s"; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  sleep 0.5
  for n in "$c" "$s"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$c"; ip netns add "$s"
ip -n "$c" link set lo up; ip -n "$s" link set lo up
ip -n "$s" link add eth0 type veth peer name eth0 netns "$c"
ip -n "$s" addr add 10.202.0.1/24 dev eth0; ip -n "$c" addr add 10.202.0.2/24 dev eth0
ip -n "$s" link set eth0 up; ip -n "$c" link set eth0 up
ip -n "$c" route add 10.99.0.0/24 via 10.202.0.1
ip netns exec "$s" sysctl -qw net.ipv4.ip_forward=1
head -c 48 /dev/urandom | base64 >"$work/key"
chmod 600 "$work/key"

cat >"$work/server.toml" <<TOML
[vpm]
control_socket = "$work/server.sock"
[cooperative]
key_file = "$work/key"
[tun]
name = "vpmq0"
address = "10.99.0.1/24"
[[app]]
name = "cooperative"
aid = 1
listen = ["10.99.0.10:9000"]
clients = ["10.202.0.0/24"]
forward = "127.0.0.1:19000"
cooperative = true
[[app]]
name = "plain"
aid = 2
listen = ["10.99.0.10:8000"]
clients = ["10.202.0.0/24"]
forward = "127.0.0.1:19000"
TOML
cat >"$work/client.toml" <<TOML
[vpm]
control_socket = "$work/client.sock"
app_socket = "$work/client-app.sock"
[cooperative]
key_file = "$work/key"
[[app]]
name = "cli"
aid = 1
remote = ["10.99.0.10:9000"]
TOML
ip netns exec "$s" "$bench" serve 127.0.0.1:19000 &
ip netns exec "$s" "$vpmtun" run -c "$work/server.toml" 2>"$work/server.log" &
ip netns exec "$c" "$vpmtun" run -c "$work/client.toml" 2>"$work/client.log" &
for _ in $(seq 50); do
  ip -n "$s" route show 10.99.0.0/24 | grep -q vpmq0 && [ -S "$work/client-app.sock" ] && break
  sleep 0.1
done
sleep 0.5

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
rate() {  # rate PORT: connections per second of $clients programs, each with one in flight
  local i pids=()
  for i in $(seq "$clients"); do
    ip netns exec "$c" "$vpmtun" exec --app cli -s "$work/client-app.sock" -- \
      "$bench" connect "10.99.0.10:$1" "$secs" 1 >"$work/out.$i" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  cat "$work"/out.* | awk '{ sum += $1; failed += $(NF-1) } END { print sum; if (failed) print "port " port ": " failed " connections failed" > "/dev/stderr" }' port="$1"
  grep -h "vpmtun exec" "$work"/out.* | sed 's/\[[0-9]*\]//; s/[0-9.]*:[0-9]* >/ADDR >/' | sort | uniq -c | head -3 >&2 || true
  rm -f "$work"/out.*
}

echo "coop bench: $(nproc) cores, $(date -u +%FT%TZ), median of $runs runs of $secs s, $clients programs"
for run in $(seq "$runs"); do
  if [ $((run % 2)) -eq 0 ]; then order="plain coop"; else order="coop plain"; fi
  for kind in $order; do
    port=8000
    [ "$kind" = coop ] && port=9000
    echo "$kind $(rate $port)" >>"$work/rates"
  done
done
of() { awk -v k="$1" '$1 == k { print $2 }' "$work/rates" | median; }
plain=$(of plain) coop=$(of coop)
printf "%-44s %12s\n" "short connections through one server daemon" "conn/s"
printf "%-44s %12s\n" "  non-cooperative (8000)" "$plain"
printf "%-44s %12s\n" "  cooperative (9000, negotiated first)" "$coop"
awk -v a="$coop" -v b="$plain" 'BEGIN { printf "cooperative / non-cooperative: %.2f\n", a / b }'
echo "the server's VPM:"
ip netns exec "$s" "$vpmtun" stats -s "$work/server.sock" |
  awk '/^[a-z_]+:$/ { g = $1 } g == "cooperative:" && $2 > 0 || g == "drops:" { print }'
echo "the client's VPM:"
ip netns exec "$c" "$vpmtun" stats -s "$work/client.sock" |
  awk '/^[a-z_]+:$/ { g = $1 } (g == "cooperative_client:" || g == "library:") && $2 > 0 { print }'
