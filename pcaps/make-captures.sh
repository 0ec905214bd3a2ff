#!/usr/bin/env bash
# Makes the bundled TUN-side captures with real tools (curl, python http.server,
# socat, nc, ping) talking through network namespaces this script creates and
# deletes. Nothing is added to the host's own namespace.
#
#   c1  10.200.1.5, 10.200.1.7          gw                       vip
#       fd00:200:1::5  ---- v-c1 ----+ 10.200.1.1               10.99.0.10
#                                    | 10.200.2.1, 10.200.3.1    fd00:99::10
#   c2  10.200.2.9, 10.200.3.3       | 10.99.0.1  --- v-vip --- (the "virtual
#       fd00:200:2::9  ---- v-c2 ----+ (router; captures here)   address")
#
# The capture on gw's v-vip is exactly what a TUN owning 10.99.0.0/24 would
# see: clients talking to the virtual address on p1 = 9000.
#
# Usage: pcaps/make-captures.sh OUTDIR     (as root)
set -euo pipefail
out="$(realpath "${1:?usage: make-captures.sh OUTDIR}")"
mkdir -p "$out"
[ "$(id -u)" -eq 0 ] || { echo "make-captures: needs root (network namespaces)" >&2; exit 77; }
py=/usr/bin/python3
ns="vpmcap$$"
c1="$ns-c1" c2="$ns-c2" gw="$ns-gw" vip="$ns-vip"
work="$(mktemp -d)"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "$c1" "$c2" "$gw" "$vip"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

in_ns() { local n="$1"; shift; ip netns exec "$n" "$@"; }

for n in "$c1" "$c2" "$gw" "$vip"; do ip netns add "$n"; in_ns "$n" ip link set lo up; done
link() {  # link GW_IFNAME PEER_NS
  ip -n "$gw" link add "$1" type veth peer name eth0 netns "$2"
  ip -n "$gw" link set "$1" up
  ip -n "$2" link set eth0 up
  # Checksums must be real in the capture: no offload, no segmentation offload.
  in_ns "$gw" ethtool -K "$1" tx off rx off tso off gso off gro off >/dev/null 2>&1
  in_ns "$2" ethtool -K eth0 tx off rx off tso off gso off gro off >/dev/null 2>&1
}
link v-c1 "$c1"; link v-c2 "$c2"; link v-vip "$vip"
in_ns "$gw" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
addr() { ip -n "$1" addr add "$3" dev "$2" nodad 2>/dev/null || ip -n "$1" addr add "$3" dev "$2"; }
addr "$gw" v-c1 10.200.1.1/24; addr "$gw" v-c1 fd00:200:1::1/64
addr "$gw" v-c2 10.200.2.1/24; addr "$gw" v-c2 10.200.3.1/24; addr "$gw" v-c2 fd00:200:2::1/64
addr "$gw" v-vip 10.99.0.1/24; addr "$gw" v-vip fd00:99::1/64
addr "$c1" eth0 10.200.1.5/24; addr "$c1" eth0 10.200.1.7/24; addr "$c1" eth0 fd00:200:1::5/64
addr "$c2" eth0 10.200.2.9/24; addr "$c2" eth0 10.200.3.3/24; addr "$c2" eth0 fd00:200:2::9/64
addr "$vip" eth0 10.99.0.10/24; addr "$vip" eth0 fd00:99::10/64
ip -n "$c1" route add default via 10.200.1.1; ip -n "$c1" -6 route add default via fd00:200:1::1
ip -n "$c2" route add default via 10.200.2.1; ip -n "$c2" -6 route add default via fd00:200:2::1
ip -n "$vip" route add default via 10.99.0.1; ip -n "$vip" -6 route add default via fd00:99::1
sleep 1  # let neighbour discovery settle so captures start clean

capture_start() {  # capture_start NAME
  # ip netns exec execs tcpdump, so $! is tcpdump itself. Router solicitations
  # and neighbour discovery (ICMPv6 133-137) are link chatter, not traffic.
  ip netns exec "$gw" tcpdump -Z root --immediate-mode -i v-vip -s 0 -U -w "$work/$1.pcap" \
    'ip or (ip6 and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137))' 2>/dev/null &
  cap_pid=$!
  pids+=("$cap_pid")
  # tcpdump creates the file once it is capturing; give it a moment more.
  for _ in $(seq 50); do [ -s "$work/$1.pcap" ] && break; sleep 0.1; done
  sleep 1
}
capture_stop() {  # capture_stop NAME
  sleep 0.5
  kill -INT "$cap_pid"; wait "$cap_pid" 2>/dev/null || true
  cp "$work/$1.pcap" "$out/$1.pcap"
}
spawn() { ip netns exec "$@" & pids+=("$!"); }  # spawn NS CMD...
listening() {  # listening NS -t|-u PORT: waits (up to 10 s) for a server to bind PORT
  for _ in $(seq 100); do
    ip netns exec "$1" ss -Hln "$2" "sport = :$3" | grep -q . && return 0
    sleep 0.1
  done
  echo "make-captures: nothing listens on port $3 in $1" >&2
  return 1
}

# --- tcp-http: HTTP over TCP, IPv4 and IPv6, both apps, an exact pair, an unmatched client
mkdir -p "$work/www"; echo "hello from the virtual address" > "$work/www/index.html"
spawn "$vip" "$py" -m http.server 9000 --bind :: --directory "$work/www"
listening "$vip" -t 9000  # python starts slowly on a loaded machine
capture_start tcp-http
in_ns "$c1" curl -s -o /dev/null http://10.99.0.10:9000/
in_ns "$c2" curl -s -o /dev/null http://10.99.0.10:9000/
in_ns "$c1" curl -s -o /dev/null --interface 10.200.1.7 --local-port 40000 http://10.99.0.10:9000/
in_ns "$c1" curl -s -o /dev/null 'http://[fd00:99::10]:9000/'
in_ns "$c2" curl -s -o /dev/null 'http://[fd00:99::10]:9000/'
in_ns "$c2" curl -s -o /dev/null --interface 10.200.3.3 http://10.99.0.10:9000/
capture_stop tcp-http
# The same exchange as a raw-IP (DLT_RAW) capture, the link type a TUN gives.
editcap -F pcap -C 14 -T rawip "$out/tcp-http.pcap" "$out/tcp-http-raw.pcap"

# --- udp: datagrams to a UDP echo service, IPv4 and IPv6, both apps
spawn "$vip" socat UDP6-RECVFROM:9000,ipv6only=0,reuseaddr,fork SYSTEM:cat
echo_pid=$!
listening "$vip" -u 9000
capture_start udp
echo "blue says hi" | in_ns "$c1" nc -u -w1 10.99.0.10 9000 >/dev/null
echo "green says hi" | in_ns "$c2" nc -u -w1 10.99.0.10 9000 >/dev/null
echo "blue over v6" | in_ns "$c1" nc -u -w1 fd00:99::10 9000 >/dev/null
echo "green over v6" | in_ns "$c2" nc -u -w1 fd00:99::10 9000 >/dev/null
capture_stop udp

# --- frag: one 3000-byte UDP datagram each way, fragmented on a 1500 MTU, IPv4 and IPv6
send_big() {  # send_big NS ADDR FAMILY
  in_ns "$1" "$py" - "$2" "$3" <<'PY'
import socket, sys
s = socket.socket(int(sys.argv[2]), socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"f" * 3000, (sys.argv[1], 9000))
s.recvfrom(65535)
PY
}
capture_start frag
send_big "$c1" 10.99.0.10 2
send_big "$c2" fd00:99::10 10
capture_stop frag
kill "$echo_pid"; sleep 0.5

# --- icmp: echo (passes untouched), port unreachable from the virtual address
# (quotes client -> vaddr:9000), and port unreachable sent to it (quotes vaddr:9000 -> client)
capture_start icmp
in_ns "$c1" ping -c 2 -i 0.2 -q 10.99.0.10 >/dev/null
in_ns "$c2" ping -6 -c 2 -i 0.2 -q fd00:99::10 >/dev/null
echo "nobody home" | in_ns "$c1" nc -u -w1 10.99.0.10 9000 >/dev/null || true
echo "nobody home" | in_ns "$c2" nc -u -w1 fd00:99::10 9000 >/dev/null || true
echo "to a closed port" | in_ns "$vip" socat -u - UDP:10.200.1.5:5555,sourceport=9000
echo "to a closed port" | in_ns "$vip" socat -u - UDP6:[fd00:200:2::9]:5555,sourceport=9000
capture_stop icmp

echo "make-captures: wrote $(ls "$out"/*.pcap | wc -l) captures to $out"
