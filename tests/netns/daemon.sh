#!/usr/bin/env bash
# The daemon end to end with real clients (curl, socat, nc, tshark).
#
#   c1  10.200.1.5, fd00:200:1::5 ---- v1 -+
#                                          d: vpmtun run, TUN vpm0 10.99.0.1/24, fd00:99::1/64
#   c2  10.200.2.9, 10.200.3.3,   ---- v2 -+   (routes 10.99.0.0/24 and fd00:99::/64 into it;
#       fd00:200:2::9                           forwards between the clients and the TUN)
#
# Forward backends run in d on 127.0.0.1: two that say who they are, an echo,
# one that reads a PROXY v2 header, and a port where nobody listens.
#
# Every namespace is made here and deleted on exit; nothing touches the
# host's own namespace. Without root: exit 77 (ctest: skipped). KEEP=1 keeps the
# captures and the daemon log in /tmp/vpmd-keep.
set -euo pipefail
vpmtun="$(realpath "$1")"
root="$(cd "$(dirname "$0")/../.." && pwd)"
source "$(dirname "$0")/common.sh"
skip_unless_netns daemon
ns="vpmd$$" d="vpmd$$-d" c1="vpmd$$-c1" c2="vpmd$$-c2"
work="$(mktemp -d)"
chmod 755 "$work"  # so that the control socket's own mode is what keeps others out
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  ip netns pids "$d" 2>/dev/null | xargs -r kill 2>/dev/null
  for n in "$d" "$c1" "$c2"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then rm -rf /tmp/vpmd-keep; mv "$work" /tmp/vpmd-keep; else rm -rf "$work"; fi
}
trap cleanup EXIT

for n in "$d" "$c1" "$c2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$d" link add v1 type veth peer name eth0 netns "$c1"
ip -n "$d" link add v2 type veth peer name eth0 netns "$c2"
ip -n "$d" addr add 10.200.1.1/24 dev v1; ip -n "$d" addr add fd00:200:1::1/64 dev v1 nodad
ip -n "$d" addr add 10.200.2.1/24 dev v2; ip -n "$d" addr add 10.200.3.1/24 dev v2
ip -n "$d" addr add fd00:200:2::1/64 dev v2 nodad
ip -n "$d" link set v1 up; ip -n "$d" link set v2 up
ip -n "$c1" addr add 10.200.1.5/24 dev eth0; ip -n "$c1" addr add fd00:200:1::5/64 dev eth0 nodad
ip -n "$c2" addr add 10.200.2.9/24 dev eth0; ip -n "$c2" addr add 10.200.3.3/24 dev eth0
ip -n "$c2" addr add fd00:200:2::9/64 dev eth0 nodad
ip -n "$c1" link set eth0 up; ip -n "$c2" link set eth0 up
# c1 sends real checksums, so its capture can be checked; c2 keeps the
# offloads, so it sends 64 KiB TCP trains with partial checksums, which the
# daemon reads as such (TUN offloads) and must complete.
in_ns "$c1" ethtool -K eth0 tx off >/dev/null 2>&1
ip -n "$c1" route add default via 10.200.1.1; ip -n "$c1" -6 route add default via fd00:200:1::1
ip -n "$c2" route add default via 10.200.2.1; ip -n "$c2" -6 route add default via fd00:200:2::1
in_ns "$d" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

queues_setting="${VPMTUN_TEST_QUEUES:-1}"
cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[metrics]
listen = "127.0.0.1:9464"
[tun]
queues = $queues_setting
name = "vpm0"
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000", "[fd00:99::10]:9000", "10.99.0.10:9000/udp"]
clients = ["10.200.1.0/24", "fd00:200:1::/64"]
serve = "http-info"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000", "[fd00:99::10]:9000", "10.99.0.10:9000/udp"]
clients = ["10.200.2.0/24", "fd00:200:2::/64"]
serve = "http-info"
[[app]]
name = "echo"
aid = 103
listen = ["10.99.0.10:7", "10.99.0.10:7/udp", "[fd00:99::10]:7", "[fd00:99::10]:7/udp"]
clients = ["10.200.1.0/24", "10.200.2.0/24", "fd00:200::/32"]
serve = "echo"
[[app]]
name = "one"
aid = 201
listen = ["10.99.0.10:8000", "[fd00:99::10]:8000"]
clients = ["10.200.1.0/24", "fd00:200:1::/64"]
forward = "127.0.0.1:19001"
[[app]]
name = "two"
aid = 202
listen = ["10.99.0.10:8000", "[fd00:99::10]:8000"]
clients = ["10.200.2.0/24", "fd00:200:2::/64"]
forward = "127.0.0.1:19002"
[[app]]
name = "bulk"
aid = 203
listen = ["10.99.0.10:8002", "10.99.0.10:8002/udp"]
clients = ["10.200.1.0/24", "10.200.2.0/24"]
forward = "127.0.0.1:19003"
[[app]]
name = "dead"
aid = 204
listen = ["10.99.0.10:8003"]
clients = ["10.200.1.0/24", "10.200.2.0/24"]
forward = "127.0.0.1:19009"
[[app]]
name = "proxied"
aid = 205
listen = ["10.99.0.10:8004", "[fd00:99::10]:8004"]
clients = ["10.200.1.0/24", "fd00:200:1::/64"]
forward = "127.0.0.1:19005"
proxy_protocol = "v2"
TOML

backend() { ip netns exec "$d" "$@" >/dev/null 2>&1 & }
backend socat TCP-LISTEN:19001,fork,reuseaddr,bind=127.0.0.1 SYSTEM:"echo backend-one"
backend socat TCP-LISTEN:19002,fork,reuseaddr,bind=127.0.0.1 SYSTEM:"echo backend-two"
# -t 60: after the client's half-close reaches it, socat by default gives
# cat's output only 0.5 s more, and a client slowed by loss may need longer.
backend socat -t 60 TCP-LISTEN:19003,fork,reuseaddr,bind=127.0.0.1 EXEC:cat
backend socat UDP-RECVFROM:19003,fork,reuseaddr,bind=127.0.0.1 EXEC:cat
cat >"$work/proxy_backend.py" <<'PY'
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 19005))
s.listen(64)
def take(c, n):
    b = b""
    while len(b) < n:
        more = c.recv(n - len(b))
        if not more:
            raise EOFError
        b += more
    return b
while True:
    c, _ = s.accept()
    try:
        h = take(c, 16)
        body = take(c, int.from_bytes(h[14:16], "big"))
        fam, size = (socket.AF_INET, 4) if h[13] >> 4 == 1 else (socket.AF_INET6, 16)
        src = socket.inet_ntop(fam, body[:size])
        dst = socket.inet_ntop(fam, body[size:2 * size])
        sport = int.from_bytes(body[2 * size:2 * size + 2], "big")
        dport = int.from_bytes(body[2 * size + 2:2 * size + 4], "big")
        ok = h[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and h[12] == 0x21
        c.sendall(f"proxy-v2 {'ok' if ok else 'bad'} {src} {sport} -> {dst} {dport}\n".encode())
    except EOFError:
        pass
    c.close()
PY
backend /usr/bin/python3 "$work/proxy_backend.py"

ip netns exec "$c1" tcpdump -i eth0 -s 0 -U -w "$work/client.pcap" --immediate-mode -Z root 2>/dev/null &
client_cap=$!
start_daemon() {  # start_daemon CONFIG [run options...]; returns once its routes are in
  ip netns exec "$d" "$vpmtun" run -c "$@" 2>>"$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 50); do ip -n "$d" route show 10.99.0.0/24 | grep -q vpm0 && return; sleep 0.1; done
  echo "daemon: did not come up"; cat "$work/daemon.log"; exit 1
}
stop_daemon() {  # stop_daemon: SIGTERM, then its exit code
  local rc=0
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || rc=$?
  daemon_pid=""
  return "$rc"
}
# With workers (VPMTUN_TEST_QUEUES=2) every worker writes to the same two
# capture files.
queues="${VPMTUN_TEST_QUEUES:-1}"
start_daemon "$work/vpm.toml" --capture-tun "$work/tun.pcap" --capture-stack "$work/stack.pcap"
workers_running() {  # one process, or a supervisor and its workers
  # The supervisor forks its workers once the TUN (and so the route that
  # start_daemon waits for) is up: give them up to 5 s to appear.
  local n
  for _ in $(seq 50); do
    n=$(pgrep -P "$daemon_pid" -c -x vpmtun || true)
    if [ "$queues" -eq 1 ]; then [ "$n" -eq 0 ] && return 0; else [ "$n" -eq "$queues" ] && return 0; fi
    sleep 0.1
  done
  echo "     $n worker processes"
  return 1
}
check "$queues worker(s) serve, capturing" workers_running

# tshark without TCP stream analysis: the captures hold 100 MB transfers.
tshark_r() { tshark -o tcp.analyze_sequence_numbers:FALSE -o tcp.desegment_tcp_streams:FALSE -r "$@" 2>/dev/null; }
body_has() {  # body_has NS EXPECTED curl-args...
  local n="$1" want="$2"; shift 2
  local got; got=$(in_ns "$n" curl -s -m 5 "$@") || return 1
  grep -qF "$want" <<<"$got" || { echo "     got: $got"; return 1; }
}

check "c1 (10.200.1.5) reaches blue on 10.99.0.10:9000" body_has "$c1" '"app":"blue"' http://10.99.0.10:9000/
check "c2 (10.200.2.9) reaches green on the same 10.99.0.10:9000" body_has "$c2" '"app":"green"' http://10.99.0.10:9000/
check "IPv6: c1 reaches blue on [fd00:99::10]:9000" body_has "$c1" '"client":"[fd00:200:1::5]:' 'http://[fd00:99::10]:9000/'
check "IPv6: c2 reaches green" body_has "$c2" '"app":"green"' 'http://[fd00:99::10]:9000/'
check "the app sees the client's own address" body_has "$c2" '"client":"10.200.2.9:' http://10.99.0.10:9000/

refused_fast() {  # refused_fast NS curl-args...: connection refused (a RST) within 1 s
  local n="$1" start end rc=0
  shift
  start=$(date +%s%N)
  in_ns "$n" curl -s -m 5 "$@" >/dev/null || rc=$?
  end=$(date +%s%N)
  [ "$rc" -eq 7 ] && [ $(((end - start) / 1000000)) -lt 1000 ]
}
check "unmatched client (10.200.3.3) gets a RST at once (curl: connection refused)" \
  refused_fast "$c2" --interface 10.200.3.3 http://10.99.0.10:9000/

udp_echo() { [ "$(echo "ping over udp" | in_ns "$1" timeout 5 nc -u -w1 "$2" 7)" = "ping over udp" ]; }
check "UDP echo over IPv4" udp_echo "$c1" 10.99.0.10
check "UDP echo over IPv6" udp_echo "$c2" fd00:99::10

head -c 20000000 /dev/urandom >"$work/blob"
head -c 100000000 /dev/urandom >"$work/blob100"
echoed_intact() {  # echoed_intact NS ADDR:PORT FILE: socat sends FILE, half-closes, reads to the end
  in_ns "$1" timeout 120 socat -t 60 -b 65536 - "TCP:$2" <"$3" >"$work/echoed"
  echo "     $(stat -c %s "$work/echoed") of $(stat -c %s "$3") bytes back"
  [ "$(sha256sum <"$work/echoed" | cut -d' ' -f1)" = "$(sha256sum <"$3" | cut -d' ' -f1)" ]
}
check "20 MB through TCP echo with half-close, sha256 intact (IPv4)" echoed_intact "$c1" 10.99.0.10:7 "$work/blob"
check "20 MB through TCP echo with half-close, sha256 intact (IPv6)" echoed_intact "$c2" "[fd00:99::10]:7" "$work/blob"

parallel_http() {  # 200 concurrent connections, each must name its app
  local i pids=()
  for i in $(seq 200); do
    ip netns exec "$c1" curl -s -m 10 http://10.99.0.10:9000/ >"$work/par.$i" &
    pids+=($!)
  done
  wait "${pids[@]}" 2>/dev/null || true
  [ "$(grep -l '"app":"blue"' "$work"/par.* | wc -l)" -eq 200 ]
}
check "200 concurrent connections all answered by their app" parallel_http

said() {  # said NS ADDR PORT EXPECTED: what a forward backend answers
  local got
  got=$(in_ns "$1" timeout 10 socat -t 5 - "TCP:$2:$3" </dev/null) || return 1
  grep -qF -- "$4" <<<"$got" || { echo "     got: $got"; return 1; }
}
check "forward: c1 reaches its backend (one) on 10.99.0.10:8000" said "$c1" 10.99.0.10 8000 backend-one
check "forward: c2 reaches the other backend (two) on the same port" said "$c2" 10.99.0.10 8000 backend-two
check "forward over IPv6 to an IPv4 backend" said "$c1" "[fd00:99::10]" 8000 backend-one
check "forward with PROXY v2: the backend learns the real client" said "$c1" 10.99.0.10 8004 "proxy-v2 ok 10.200.1.5"
check "PROXY v2 over IPv6 names the p1 the client used" said "$c1" "[fd00:99::10]" 8004 "-> fd00:99::10 8004"
closed_both_ways() {  # 50 clients that wait for the backend's end before closing theirs
  in_ns "$c1" timeout 30 python3 - <<'PY' || return 1
import socket
for _ in range(50):
    s = socket.create_connection(("10.99.0.10", 8000), timeout=5)
    got = b""
    while chunk := s.recv(100):
        got += chunk
    assert got == b"backend-one\n", got
    s.close()
PY
  sleep 0.5
  # Our relay socket sees the backend's FIN first and closes once the
  # client's comes: neither end may be left half-closed.
  local left
  left=$(in_ns "$d" ss -tanH state close-wait state fin-wait-2 '( sport = :19001 or dport = :19001 )' | wc -l)
  echo "     backend connections left in CLOSE-WAIT or FIN-WAIT-2: $left"
  [ "$left" -eq 0 ]
}
check "forward: a backend that ends first, then the client: both connections close" closed_both_ways
check "forward: backend down -> the client gets a RST at once, no connection" \
  refused_fast "$c1" http://10.99.0.10:8003/
check "forward: 100 MB each way through an echo backend, sha256 intact" \
  echoed_intact "$c2" 10.99.0.10:8002 "$work/blob100"
udp_fwd() { [ "$(echo "udp through a backend" | in_ns "$c1" timeout 5 nc -u -w1 10.99.0.10 8002)" = "udp through a backend" ]; }
check "forward: UDP datagrams to a backend and back" udp_fwd

kill -INT "$client_cap"; wait "$client_cap" 2>/dev/null || true
only_p1() {  # what the client saw on the wire towards 10.99.0.10: ports 9000 and 7 only
  local ports
  ports=$(tshark_r "$work/client.pcap" -Y "ip.addr == 10.99.0.10 && (tcp || udp)" -T fields \
    -e tcp.srcport -e tcp.dstport -e udp.srcport -e udp.dstport 2>/dev/null |
    tr '\t' '\n' | grep -vE '^$' | sort -u | awk '$1 < 30000')
  [ "$(tr '\n' ' ' <<<"$ports")" = "7 8000 8002 8003 8004 9000 " ]
}
check "client side sees only the p1 ports of the virtual address" only_p1
two_p2s() {  # the stack saw blue and green on two different hidden ports
  local p2s
  p2s=$(tshark_r "$work/stack.pcap" -Y "ip.dst == 10.99.0.10 && tcp.flags.syn == 1" -T fields -e tcp.dstport |
    sort -u | awk '$1 >= 20000 && $1 <= 29999' | wc -l)
  [ "$p2s" -ge 7 ]  # blue, green, echo, one, two, bulk, proxied
}
check "stack side shows a different p2 per app" two_p2s
no_bad_checksums() {
  # A TCP checksum of 0xffff is the other zero of one's complement (RFC 1624):
  # receivers accept it and the kernel sends it now and then; tshark flags it.
  # A train longer than the path (the daemon's TSO) reaches the client over
  # the veth as one packet whose checksum nobody completed (it is partial).
  local f bad=0 wrong='((tcp.checksum.status == 0 && tcp.checksum != 0xffff) || udp.checksum.status == 0 || icmp.checksum.status == 0)'
  local files=("$work/client.pcap")
  [ "$queues" -eq 1 ] && files+=("$work/tun.pcap" "$work/stack.pcap")
  for f in "${files[@]}"; do
    echo "     $(basename "$f"): $(capinfos -c -M "$f" | awk '/Number of packets/ {print $NF}') packets"
    [ "$f" = "$work/client.pcap" ] && wrong="$wrong && (ip.len <= 1500 || ipv6.plen <= 1460)"
    bad=$((bad + $(tshark_r "$f" -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE -Y "$wrong" | wc -l)))
  done
  [ "$bad" -eq 0 ]
}

# Operating: the control socket and the metrics, checked against traffic made here.
sock="$work/vpm.sock"
ask() { "$vpmtun" "$@" -s "$sock"; }
json() {  # json VERB [ARGS] -- PYTHON: the answer as `r` in a Python expression that must hold
  local args=() 
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  ask "${args[@]}" --json | /usr/bin/python3 -c "import json, sys; r = json.load(sys.stdin); sys.exit(0 if ($2) else 1)"
}
second_daemon_refused() {  # same control socket, another TUN: a clear error, exit 1
  local out rc=0
  sed 's/^name = "vpm0"/name = "vpm9"\nconfigure = false/' "$work/vpm.toml" >"$work/other.toml"
  out=$(in_ns "$d" timeout 5 "$vpmtun" run -c "$work/other.toml" 2>&1) || rc=$?
  echo "     $out"
  [ "$rc" -eq 1 ] && [[ "$out" == *"$sock is in use by another running vpmtun"* ]]
}
check "control: a second daemon on the same socket gets a clear error" second_daemon_refused
check "control: the socket is mode 0600" test "$(stat -c %a "$sock")" = 600
check "control: another user cannot use it" \
  bash -c "out=\$(setpriv --reuid=65534 --regid=65534 --clear-groups '$vpmtun' stats -s '$sock' 2>&1); echo \"     \$out\"; [[ \$out == *'permission denied'* ]]"
stats_move() {  # five requests: flows, accepted connections and TUN packets all grow by them
  local before after
  before=$(ask stats --json)
  for _ in 1 2 3 4 5; do in_ns "$c1" curl -s -m 5 http://10.99.0.10:9000/ >/dev/null; done
  after=$(ask stats --json)
  /usr/bin/python3 - "$before" "$after" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
grew = lambda g, k, n: a[g][k] - b[g][k] >= n
print(f"     flows_created +{a['engine']['flows_created'] - b['engine']['flows_created']}, "
      f"tcp_accepted +{a['stack']['tcp_accepted'] - b['stack']['tcp_accepted']}, "
      f"tun packets_in +{a['tun']['packets_in'] - b['tun']['packets_in']}")
# Each request is at least 4 packets in (SYN, request, FIN, ACK) and 3 out.
sys.exit(0 if grew("engine", "flows_created", 5) and grew("stack", "tcp_accepted", 5)
         and grew("tun", "packets_in", 20) and grew("engine", "translated", 35)
         and a["drops"]["unmatched"] >= 1 and a["stack"]["lwip_asserts"] == 0 else 1)
PY
}
check "stats --json: the counters move with the traffic" stats_move
open_flow() {  # a connection held open shows in the table with its app, p2 and state
  local rc=0
  (sleep 3; echo bye) | in_ns "$c1" socat -t 1 - TCP:10.99.0.10:7 >/dev/null &
  in_ns "$c2" curl -s -m 5 http://10.99.0.10:9000/ >/dev/null  # a green flow for --app
  sleep 1
  ask table --client 10.200.1.5 | grep -E "^tcp +10.200.1.5:[0-9]+ +10.99.0.10:7 +echo" | sed 's/^/     /'
  json table --client 10.200.1.0/24 -- "any(f['virtual'] == '10.99.0.10:7' and f['app'] == 'echo' and f['state'] == 'established' and 20000 <= f['p2'] <= 29999 and f['client'].startswith('10.200.1.5:') and f['packets_in'] >= 2 for f in r)" || rc=1
  json table --app green -- "r and all(f['app'] == 'green' and not f['client'].startswith('10.200.1.') for f in r)" || rc=1
  wait $!
  return "$rc"
}
check "table: an open connection, its app, p2 and state; --client and --app filter" open_flow
check "apps: backends up or down as last seen, connections counted" \
  json apps -- "(lambda a: a['one']['backend_health'] == 'up' and a['dead']['backend_health'] == 'down' and a['dead']['backend_failures'] >= 1 and a['green']['total'] >= 1 and a['echo']['tcp_accepted'] >= 2 and a['blue']['p2s'][0].isdigit())({x['name']: x for x in r})"
check "apps and stats also answer as text" bash -c "'$vpmtun' apps -s '$sock' | grep -q '^bulk (aid' && '$vpmtun' stats -s '$sock' | grep -q '^uptime'"
check "control: a bad filter is an error naming it" \
  bash -c "! out=\$('$vpmtun' table --app nosuch -s '$sock' 2>&1); [[ \$out == *\"no app is named 'nosuch'\"* ]]"
metrics_move() {  # scraped with curl and parsed: well formed, and moving with traffic
  local one two
  one=$(in_ns "$d" curl -sf http://127.0.0.1:9464/metrics) || return 1
  in_ns "$c1" curl -s -m 5 http://10.99.0.10:9000/ >/dev/null
  two=$(in_ns "$d" curl -sf http://127.0.0.1:9464/metrics) || return 1
  /usr/bin/python3 - "$one" "$two" <<'PY'
import re, sys
def parse(text):
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            m = re.fullmatch(r'([a-z_]+)(\{[^}]*\})? (\d+)', line)
            if not m or m.group(1) not in typed:
                sys.exit(f"bad line: {line!r}")
            samples[m.group(1) + (m.group(2) or "")] = int(m.group(3))
    return samples
a, b = parse(sys.argv[1]), parse(sys.argv[2])
moved = b["vpmtun_engine_translated_total"] - a["vpmtun_engine_translated_total"]
print(f"     {len(b)} samples; translated +{moved}; flows {sum(v for k, v in b.items() if k.startswith('vpmtun_flows{'))}")
sys.exit(0 if moved >= 5 and 'vpmtun_flows{proto="tcp",state="established"}' in b
         and b['vpmtun_app_flows_total{app="blue",aid="101",draining="false"}'] >= 1 else 1)
PY
}
check "metrics: Prometheus text, scraped with curl, moves with traffic" metrics_move
log_limited() {  # 40 refused clients at once: at most 10 lines a second, the rest counted
  local lines before
  before=$(wc -l <"$work/daemon.log")
  for _ in $(seq 40); do in_ns "$c2" nc -z -w1 -s 10.200.3.3 10.99.0.10 9000 & done
  wait $!
  sleep 1.5
  lines=$(tail -n +"$((before + 1))" "$work/daemon.log")
  echo "     $(grep -c 'refused tcp 10.200.3.3' <<<"$lines") lines name a refusal; $(grep -o '[0-9]* more refusals and drops not logged' <<<"$lines" | paste -sd+)"
  [ "$(grep -c 'refused tcp 10.200.3.3:[0-9]* > 10.99.0.10:9000 \[S\]: no app claims' <<<"$lines")" -le 20 ] &&
    grep -q 'more refusals and drops not logged' <<<"$lines"
}
check "logs: refusals at info, named, at most 10 a second, the rest counted" log_limited

check "SIGTERM: the daemon exits 0" stop_daemon
check "SIGTERM: no TUN, address, route or control socket is left behind" \
  bash -c "! ip -n '$d' link show vpm0 2>/dev/null && ! ip -n '$d' route | grep -q 10.99.0 && ! ip -n '$d' -6 route | grep -q fd00:99 && [ ! -e '$sock' ]"
check "tshark finds no bad checksum on either side" no_bad_checksums
offloaded() {  # with TUN offloads, TCP crosses the TUN in trains longer than the 1500-byte path
  local to from
  to=$(tshark_r "$work/tun.pcap" -Y 'ip.dst == 10.99.0.10 && frame.len > 1500' | wc -l)
  from=$(tshark_r "$work/tun.pcap" -Y 'ip.src == 10.99.0.10 && frame.len > 1500' | wc -l)
  echo "     TCP packets over 1500 bytes in tun.pcap: $to in, $from out"
  [ "$to" -gt 0 ] && [ "$from" -gt 0 ]
}
check "offloads: TCP crosses the TUN in trains of up to 64 KiB both ways" offloaded
replays_to_stack() {  # replaying the TUN-side capture gives the stack-side capture
  # With workers the files interleave the workers' packets differently:
  # then they must hold the same packets, in any order.
  "$vpmtun" replay "$work/tun.pcap" -c "$work/vpm.toml" -o "$work/replayed.pcap" -q 2>/dev/null &&
    python3 - "$work/replayed.pcap" "$work/stack.pcap" "$queues" <<'PY'
import collections, struct, sys
def packets(path):
    data = open(path, "rb").read()
    out, at = [], 24
    while at < len(data):
        caplen = struct.unpack_from("=I", data, at + 8)[0]
        out.append(data[at + 16:at + 16 + caplen])
        at += 16 + caplen
    return out
a, b = packets(sys.argv[1]), packets(sys.argv[2])
same = a == b if sys.argv[3] == "1" else collections.Counter(a) == collections.Counter(b)
print(f"     replayed {len(a)} packets, stack side {len(b)}: {'the same' if same else 'different'}")
sys.exit(0 if same else 1)
PY
}
check "vpmtun replay of --capture-tun gives --capture-stack" replays_to_stack

# Second run, no captures, and without TUN offloads (the first run has
# them), so that every packet the daemon reads or writes is one on the
# wire: per-connection allocation, and 2% loss each way (nft drops one
# packet in 50 at random on the forward path; segments also arrive out of
# order behind each loss).
# It also drops to an unprivileged user once set up.
sed 's/^\[vpm\]/[vpm]\nallocation = "per-connection"/; s/^\[tun\]/[tun]\noffload = false/' "$work/vpm.toml" >"$work/vpm2.toml"
printf '[daemon]\nuser = "nobody"\n' >>"$work/vpm2.toml"
# As systemd would start it (Type=notify): it says READY=1 on $NOTIFY_SOCKET.
in_ns "$d" socat -u UNIX-RECV:"$work/notify.sock" OPEN:"$work/notify.out,creat,append" &>/dev/null &
for _ in $(seq 20); do [ -S "$work/notify.sock" ] && break; sleep 0.1; done
chmod 666 "$work/notify.sock"  # systemd's is writable by services that drop privileges
NOTIFY_SOCKET="$work/notify.sock" start_daemon "$work/vpm2.toml" --log-format json --log-level debug
ready_notified() {
  for _ in $(seq 30); do grep -q '^READY=1' "$work/notify.out" 2>/dev/null && return; sleep 0.1; done
  return 1
}
check "systemd: READY=1 on \$NOTIFY_SOCKET once up" ready_notified
unprivileged() {  # /proc says: uid nobody, no capabilities left
  local status
  status=$(cat "/proc/$daemon_pid/status")
  echo "     $(grep -E '^(Uid|CapEff)' <<<"$status" | tr -s '\t' ' ' | paste -sd';')"
  grep -qE "^Uid:\s+65534\s+65534\s+65534\s+65534" <<<"$status" && grep -qE "^CapEff:\s+0+$" <<<"$status"
}
check "privileges: runs as [daemon] user (nobody) with no capabilities" unprivileged
check "privileges: the control socket belongs to that user" test "$(stat -c %U "$work/vpm.sock")" = nobody
p2_of() { in_ns "$1" curl -s -m 5 "http://10.99.0.10:9000/" | grep -o '"app":"[a-z]*".*"p2":[0-9]*'; }
per_connection() {
  local a b c
  a=$(p2_of "$c1") b=$(p2_of "$c1") c=$(p2_of "$c2")
  echo "     $a | $b | $c"
  [[ "$a" == '"app":"blue"'* && "$b" == '"app":"blue"'* && "$c" == '"app":"green"'* ]] &&
    [ "${a##*:}" != "${b##*:}" ] && [ "${b##*:}" != "${c##*:}" ] && [ "${a##*:}" != "${c##*:}" ]
}
check "per-connection: each connection its own p2, each client its own app" per_connection
check "per-connection: forward to a backend" said "$c2" 10.99.0.10 8000 backend-two
check "per-connection: UDP forward" udp_fwd
reload_unprivileged() {  # the daemon, as nobody, reads its file again: c2 (10.200.2.9) goes to teal
  local out
  printf '[[app]]\nname = "teal"\naid = 104\nlisten = ["10.99.0.10:9000"]\nclients = ["10.200.2.9"]\nserve = "http-info"\n' >>"$work/vpm2.toml"
  out=$("$vpmtun" reload -s "$work/vpm.sock") || return 1
  echo "     $out"
  body_has "$c2" '"app":"teal"' http://10.99.0.10:9000/ && body_has "$c1" '"app":"blue"' http://10.99.0.10:9000/
}
check "reload as [daemon] user, per-connection: a new app takes c2 from green" reload_unprivileged
in_ns "$d" nft -f - <<NFT
table inet vpmloss {
  chain forward {
    type filter hook forward priority 0;
    ip daddr 10.99.0.10 tcp dport 8002 numgen random mod 50 == 0 counter drop
    ip saddr 10.99.0.10 tcp sport 8002 numgen random mod 50 == 0 counter drop
  }
}
NFT
lossy_bulk() {
  local rc=0
  echoed_intact "$c2" 10.99.0.10:8002 "$work/blob" || rc=$?
  echo "     nft dropped: $(in_ns "$d" nft list chain inet vpmloss forward | grep -o 'packets [0-9]*' | tr '\n' ' ')"
  return "$rc"
}
check "2% loss each way: 20 MB each way through a forward, sha256 intact" lossy_bulk
drain() {  # SIGTERM with a connection open: it finishes, new ones are refused
  local rc=0 client
  (sleep 2; echo "sent while draining") | in_ns "$c1" timeout 10 socat -t 5 - TCP:10.99.0.10:7 >"$work/drain.out" &
  client=$!
  sleep 0.5
  kill -TERM "$daemon_pid"
  sleep 0.3
  in_ns "$c2" curl -s -m 3 http://10.99.0.10:9000/ >/dev/null || rc=$?
  wait "$client" || true
  wait "$daemon_pid" || return 1
  daemon_pid=""
  echo "     during the drain: new connection: curl exit $rc; the open one got back: $(cat "$work/drain.out")"
  [ "$rc" -eq 7 ] && [ "$(cat "$work/drain.out")" = "sent while draining" ]
}
check "SIGTERM drains: the open connection completes, a new one is refused, exit 0" drain
json_logs() {  # the second run logged JSON, one object a line, connections at debug
  grep '^{' "$work/daemon.log" | /usr/bin/python3 -c "$(cat <<'PY'
import json, sys
msgs = [json.loads(line) for line in sys.stdin]
opened = sum(m["msg"].startswith("tcp open: 10.200.") for m in msgs)
closed = sum(m["msg"].startswith("tcp closed: 10.200.") for m in msgs)
print(f"     {len(msgs)} JSON lines; {opened} connections opened, {closed} closed")
sys.exit(0 if msgs and all({"time", "level", "msg"} <= m.keys() for m in msgs) and opened and closed else 1)
PY
)"
}
check "logs: --log-format json gives one object a line; debug names each connection" json_logs
check "no lwIP assertion fired in either run" bash -c "! grep -q 'lwIP assertion' '$work/daemon.log'"

[ "$fail" -eq 0 ] || { echo "--- daemon log"; tail -20 "$work/daemon.log"; }
echo "daemon: $fail failed"
[ "$fail" -eq 0 ]
