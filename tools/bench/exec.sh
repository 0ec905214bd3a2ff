#!/usr/bin/env bash
# What running a server under `vpmtun exec` costs: the same nginx and
# iperf3, reached directly, through vpmtun `forward`, and as an exec'd
# instance (the application library), measured in the same run. A script,
# not a test. Needs root; everything happens in two namespaces made here.
#
#   c  10.201.0.2/24 ---- veth (MTU 1500) ----- s  10.201.0.1/24
#      routes 10.99.0.0/24 via s                   nginx :8081, iperf3 -s :5202   (plain)
#                                                  vpmtun: TUN vpmx0, 10.99.0.10:
#                                                    8081 forward -> 127.0.0.1:8081
#                                                    5202 forward -> 127.0.0.1:5202
#                                                    9000 exec: nginx, listen 9000
#                                                    5201 exec: iperf3 -s -p 5201 -B 0.0.0.0
#                                                         (IPv4, as the forward backend is reached)
#
#   tools/bench/exec.sh [BUILD_DIR] [SECONDS] [RUNS]   (defaults: build-bench, 5, 3)
#   QUEUES=N sets [tun] queues (default "auto": a worker per core).
#
# Requests per second: ab, a new connection per request, 32 in flight, a
# 1 KiB page. Single stream: iperf3 receiver Gbit/s, both directions.
# Every figure is the median of RUNS runs; the ratio that matters is exec
# against forward (the target: at least 0.95).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-bench}"
secs="${2:-5}"
runs="${3:-3}"
[ "$(id -u)" -eq 0 ] || { echo "exec.sh: needs root (network namespaces)" >&2; exit 1; }
for t in iperf3 nginx ab; do
  command -v "$t" >/dev/null || { echo "exec.sh: $t missing (tools/install-deps)" >&2; exit 1; }
done
if [ ! -x "$build/tools/vpmtun" ] || [ ! -e "$build/tools/vpmtun-app/libvpmtun-app.so" ]; then
  "$root/tools/install-deps" "$build" >/dev/null
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVPMTUN_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target vpmtun vpmtun-app >/dev/null
fi
vpmtun="$build/tools/vpmtun"

c="vpmxb$$-c" s="vpmxb$$-s"
work="$(mktemp -d)"
chmod 755 "$work"
cleanup() {
  ip netns pids "$s" 2>/dev/null | xargs -r kill 2>/dev/null || true
  sleep 0.5
  ip netns del "$c" 2>/dev/null || true
  ip netns del "$s" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_c() { ip netns exec "$c" "$@"; }

ip netns add "$c"; ip netns add "$s"
ip -n "$c" link set lo up; ip -n "$s" link set lo up
ip -n "$s" link add eth0 type veth peer name eth0 netns "$c"
ip -n "$s" addr add 10.201.0.1/24 dev eth0; ip -n "$c" addr add 10.201.0.2/24 dev eth0
ip -n "$s" link set eth0 up; ip -n "$c" link set eth0 up
ip -n "$c" route add 10.99.0.0/24 via 10.201.0.1
ip netns exec "$s" sysctl -qw net.ipv4.ip_forward=1

cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
app_socket = "$work/app.sock"
[tun]
name = "vpmx0"
address = "10.99.0.1/24"
queues = ${QUEUES:-\"auto\"}
[[app]]
name = "web-forward"
aid = 1
listen = ["10.99.0.10:8081"]
clients = ["10.201.0.0/24"]
forward = "127.0.0.1:8081"
[[app]]
name = "iperf-forward"
aid = 2
listen = ["10.99.0.10:5202"]
clients = ["10.201.0.0/24"]
forward = "127.0.0.1:5202"
[[app]]
name = "exec"
aid = 3
listen = ["10.99.0.10:9000", "10.99.0.10:5201"]
clients = ["10.201.0.0/24"]
serve = "exec"
TOML
nginx_conf() {  # nginx_conf DIR PORT
  mkdir -p "$1/logs"
  head -c 1024 /dev/zero | tr '\0' x >"$1/index.html"
  cat >"$1/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  server { listen $2 backlog=4096; root $1; }
}
NGINX
}
nginx_conf "$work/plain" 8081
nginx_conf "$work/exec" 9000
ip netns exec "$s" "$vpmtun" run -c "$work/vpm.toml" 2>"$work/vpmtun.log" &
for _ in $(seq 50); do ip -n "$s" route show 10.99.0.0/24 | grep -q vpmx0 && break; sleep 0.1; done
ip netns exec "$s" nginx -p "$work/plain" -c "$work/plain/nginx.conf" &
ip netns exec "$s" iperf3 -s -p 5202 >/dev/null 2>&1 &
ip netns exec "$s" "$vpmtun" exec --app exec -s "$work/app.sock" -- \
  nginx -p "$work/exec" -c "$work/exec/nginx.conf" &
ip netns exec "$s" "$vpmtun" exec --app exec -s "$work/app.sock" -- iperf3 -s -p 5201 -B 0.0.0.0 >/dev/null 2>&1 &
for _ in $(seq 50); do
  [ "$("$vpmtun" apps -s "$work/vpm.sock" | grep -c 'instance pid')" -ge 2 ] && break
  sleep 0.1
done
sleep 1

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
rps() {  # rps URL: requests per second, a new connection each, 32 in flight; one run
  in_c ab -q -c 32 -t "$secs" -n 10000000 "$1" 2>/dev/null |
    awk '/^Requests per second/ { print $4 } /^Failed requests/ && $3 > 0 { print "failed " $3 > "/dev/stderr" }'
}
gbps() {  # gbps HOST PORT [-R]: iperf3 receiver Gbit/s, one run
  in_c iperf3 -c "$1" -p "$2" -t "$secs" -J "${@:3}" |
    /usr/bin/python3 -c 'import json,sys; r = json.load(sys.stdin); print(r["end"]["sum_received"]["bits_per_second"] / 1e9 if "sum_received" in r.get("end", {}) else sys.exit("iperf3: " + r.get("error", "no result")))'
}

echo "exec bench: $(nproc) cores, $(date -u +%FT%TZ), median of $runs runs of $secs s"
# Each run measures the three in turn, in a rotating order, so that the
# machine's drift (2 shared cores) falls on all of them alike.
pages=("direct http://10.201.0.1:8081/" "forward http://10.99.0.10:8081/" "exec http://10.99.0.10:9000/")
for run in $(seq "$runs"); do
  for i in 0 1 2; do
    set -- ${pages[$(( (i + run) % 3 ))]}
    echo "$1 $(rps "$2")" >>"$work/rps"
  done
done
of() { awk -v k="$2" '$1 == k { print $2 }' "$1" | median; }
direct=$(of "$work/rps" direct) forward=$(of "$work/rps" forward) exec=$(of "$work/rps" exec)
printf "%-40s %10s %10s %10s\n" "nginx, a new connection per request" "req/s" "vs direct" "vs forward"
printf "%-40s %10.0f %10s %10s\n" "direct (the kernel)" "$direct" "1.00" "$(ratio "$direct" "$forward")"
printf "%-40s %10.0f %10s %10s\n" "vpmtun forward" "$forward" "$(ratio "$forward" "$direct")" "1.00"
printf "%-40s %10.0f %10s %10s\n" "vpmtun exec (application library)" "$exec" "$(ratio "$exec" "$direct")" "$(ratio "$exec" "$forward")"
echo
printf "%-40s %10s %10s %10s\n" "iperf3, one stream" "up Gbit/s" "down" "vs forward"
targets=("direct 10.201.0.1 5202" "forward 10.99.0.10 5202" "exec 10.99.0.10 5201")
for run in $(seq "$runs"); do
  for i in 0 1 2; do
    set -- ${targets[$(( (i + run) % 3 ))]}
    echo "$1 up $(gbps "$2" "$3")" >>"$work/iperf"
    echo "$1 down $(gbps "$2" "$3" -R)" >>"$work/iperf"
  done
done
declare -A up down
for k in direct forward exec; do
  up[$k]=$(awk -v k="$k" '$1 == k && $2 == "up" { print $3 }' "$work/iperf" | median)
  down[$k]=$(awk -v k="$k" '$1 == k && $2 == "down" { print $3 }' "$work/iperf" | median)
done
for k in direct forward exec; do
  printf "%-40s %10.2f %10.2f %4s/%-4s\n" "$k" "${up[$k]}" "${down[$k]}" \
    "$(ratio "${up[$k]}" "${up[forward]}")" "$(ratio "${down[$k]}" "${down[forward]}")"
done
grep -iE "assert|error" "$work/vpmtun.log" || true
