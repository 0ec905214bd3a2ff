#!/usr/bin/env bash
# Cooperative mode: two VPMs negotiate p2 and check AIDs (FIG 6-8).
#
#   c1  10.200.1.5 ---- v1 -+   d: the server's VPM (vpmtun run, TUN vpm0 10.99.0.1/24,
#   vpmtun run, no [tun]    |      virtual 10.99.0.10), apps of aid 101, cooperative:
#   apps good (aid 101),    |      web :9000 (http-info), store :6379 (redis-server under
#   wrong (aid 102)         |      vpmtun exec), echo :7000; plain :8000 (not cooperative).
#   c2  10.200.2.5 ---- v2 -+      Also FIG 8: app local (aid 101) for programs in d itself.
#   vpmtun run, no [tun], another key
#
# Client programs run unmodified under `vpmtun exec` in c1 (and c2, and d):
# curl, redis-cli, socat, python. Each must reach its own AID's app through
# 10.99.0.10:p1 only after its VPM negotiated, see p1 in getpeername, and
# every other way in must be refused. tshark on c1's link shows the
# negotiation on p1 and the data on p2.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
skip_unless_netns coop
for tool in redis-server redis-cli socat curl tshark; do
  command -v "$tool" >/dev/null || { echo "coop: SKIPPED ($tool is not installed: tools/install-deps)"; exit 77; }
done
py=/usr/bin/python3
d="vpmc$$-d" c1="vpmc$$-c1" c2="vpmc$$-c2"
work="$(mktemp -d)"
chmod 755 "$work"
daemon_pid="" pids=()
cleanup() {
  for p in "${pids[@]}" $daemon_pid; do kill "$p" 2>/dev/null || true; done
  for n in "$d" "$c1" "$c2"; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in "$d" "$c1" "$c2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c1" "$c2"

head -c 48 /dev/urandom | base64 >"$work/key"
head -c 48 /dev/urandom | base64 >"$work/other.key"
chmod 600 "$work/key" "$work/other.key"

cat >"$work/server.toml" <<TOML
[vpm]
control_socket = "$work/server.sock"
app_socket = "$work/server-app.sock"
[cooperative]
key_file = "$work/key"
[tun]
name = "vpm0"
address = "10.99.0.1/24"
queues = ${VPMTUN_TEST_QUEUES:-1}
[[app]]
name = "web"
aid = 101
listen = ["10.99.0.10:9000"]
clients = ["10.200.0.0/16", "10.99.0.1"]
serve = "http-info"
cooperative = true
[[app]]
name = "store"
aid = 101
listen = ["10.99.0.10:6379"]
clients = ["10.200.0.0/16"]
serve = "exec"
cooperative = true
[[app]]
name = "echo"
aid = 101
listen = ["10.99.0.10:7000"]
clients = ["10.200.0.0/16"]
serve = "echo"
cooperative = true
[[app]]
name = "plain"
aid = 201
listen = ["10.99.0.10:8000"]
clients = ["10.200.0.0/16"]
serve = "http-info"
[[app]]
name = "local"
aid = 101
remote = ["10.99.0.10:9000"]
TOML

client_config() {  # client_config NAME KEY
  cat <<TOML
[vpm]
control_socket = "$work/$1.sock"
app_socket = "$work/$1-app.sock"
[cooperative]
key_file = "$2"
[[app]]
name = "good"
aid = 101
remote = ["10.99.0.10:9000", "10.99.0.10:6379", "10.99.0.10:7000"]
[[app]]
name = "wrong"
aid = 102
remote = ["10.99.0.10:9000"]
TOML
}
client_config c1 "$work/key" >"$work/c1.toml"
client_config c2 "$work/other.key" >"$work/c2.toml"

start_vpmtun "$d" "$work/server.log" "$work/server.toml"
server_pid=$daemon_pid
client_daemon() {  # client_daemon NS NAME: the client side's daemon, no TUN
  ip netns exec "$1" "$vpmtun" run -c "$work/$2.toml" 2>>"$work/$2.log" &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$work/$2-app.sock" ] && return; sleep 0.1; done
  echo "client daemon $2 did not come up"; cat "$work/$2.log"; exit 1
}
client_daemon "$c1" c1
client_daemon "$c2" c2

instance() {  # instance NAME APP CMD...: a server program under vpmtun exec in d
  local name="$1" app="$2"
  shift 2
  (cd "$work" && exec ip netns exec "$d" "$vpmtun" exec --app "$app" -s "$work/server-app.sock" -- "$@") \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
}
instance redis store redis-server --port 6379 --save "" --appendonly no --protected-mode no
for _ in $(seq 50); do in_ns "$d" "$vpmtun" apps -s "$work/server.sock" | grep -q redis && break; sleep 0.1; done

# The HTTP client run under `vpmtun exec`: curl. An ASan build's `vpmtun
# exec` preloads the ASan runtime, with which curl deadlocks at start (in
# p11-kit's constructor, before any of ours runs): there, python's urllib
# stands in, and says so.
http="curl -sS -m 10" http_name=curl
if ! timeout 10 ip netns exec "$c1" "$vpmtun" exec --app good -s "$work/c1-app.sock" -- curl --version >/dev/null 2>&1; then
  echo "note: curl does not start under this build's vpmtun exec; python's urllib stands in for it"
  http="$py $here/http_get.py" http_name="python's urllib"
fi

# as NS NAME CMD...: CMD under vpmtun exec --app NAME of the client daemon NAME's socket
in_c1() { local app="$1"; shift; timeout 20 ip netns exec "$c1" "$vpmtun" exec --app "$app" -s "$work/c1-app.sock" -- "$@"; }
stats() { in_ns "$d" "$vpmtun" stats -s "$work/server.sock"; }
stat_of() { stats | awk -v k="$1" '$1 == k { print $2; exit }'; }
export -f in_ns stats stat_of
export d vpmtun work
queues="${VPMTUN_TEST_QUEUES:-1}"
if [ "$queues" -gt 1 ]; then
  check "the server's VPM runs $queues workers, its queues picked by client address" \
    bash -c "stats | grep -qE '^  workers +$queues\$' && grep -q 'picked by their addresses' '$work/server.log'"
fi

tshark_pid=""
timeout 60 ip netns exec "$c1" tshark -q -i eth0 -w "$work/link.pcap" -f "tcp and host 10.99.0.10" 2>"$work/tshark.log" &
tshark_pid=$!
pids+=("$tshark_pid")
for _ in $(seq 50); do grep -q Capturing "$work/tshark.log" 2>/dev/null && break; sleep 0.1; done

check "$http_name under vpmtun exec reaches web through 10.99.0.10:9000 after negotiating" \
  bash -c "in_c1() { timeout 20 ip netns exec $c1 $vpmtun exec --app \"\$1\" -s $work/c1-app.sock -- \"\${@:2}\"; }
           in_c1 good $http http://10.99.0.10:9000/ >$work/curl.json &&
           grep -q '\"app\":\"web\"' $work/curl.json && grep -q '\"client\":\"10.200.1.5:' $work/curl.json &&
           grep -q '\"p1\":9000' $work/curl.json"
p2=$(sed -n 's/.*"p2":\([0-9]*\).*/\1/p' "$work/curl.json")

getpeer='
import socket, sys
s = socket.create_connection(("10.99.0.10", 9000), timeout=10)
print(s.getpeername()[1], s.getsockname()[0])
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(s.recv(4096).decode().split("\r\n\r\n", 1)[1].strip())
'
check "getpeername inside the client program says vaddr:p1, the data went to p2" \
  bash -c "out=\$(timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- $py -c '$getpeer') &&
           echo \"\$out\" | head -1 | grep -qx '9000 10.200.1.5' && echo \"\$out\" | grep -q '\"p2\":$p2'"

check "redis-cli under vpmtun exec writes and reads the server's redis on 6379" \
  bash -c "timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- redis-cli -h 10.99.0.10 -p 6379 set colour blue | grep -qx OK &&
           timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- redis-cli -h 10.99.0.10 -p 6379 get colour | grep -qx blue &&
           timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- redis-cli -h 10.99.0.10 -p 6379 client list | grep -q 'addr=10.200.1.5:.* laddr=10.99.0.10:6379'"

check "socat under vpmtun exec: echo on 7000" \
  bash -c "[ \"\$(echo cooperative | timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- socat -t 2 - TCP:10.99.0.10:7000)\" = cooperative ]"

# The link shows both: the negotiation's bytes on p1 and the program's connection on p2.
sleep 1
kill -INT "$tshark_pid" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$tshark_pid" 2>/dev/null || break; sleep 0.1; done
check "tshark on c1's link: negotiation on 10.99.0.10:9000, the data on p2 ($p2)" \
  bash -c "tshark -r $work/link.pcap -Y 'ip.dst == 10.99.0.10 && tcp.dstport == 9000 && tcp.len > 0' 2>/dev/null | grep -q . &&
           ! tshark -r $work/link.pcap -Y 'tcp.dstport == 9000 && http.request' 2>/dev/null | grep -q . &&
           tshark -r $work/link.pcap -Y 'ip.dst == 10.99.0.10 && tcp.dstport == $p2 && tcp.flags.syn == 1' 2>/dev/null | grep -q . &&
           tshark -r $work/link.pcap -d tcp.port==$p2,http -Y 'tcp.dstport == $p2 && http.request' 2>/dev/null | grep -q ."

refused_before=$(stat_of aid_mismatch || echo 0)
check "a client app of another AID is refused (ECONNREFUSED)" \
  bash -c "! timeout 20 ip netns exec $c1 $vpmtun exec --app wrong -s $work/c1-app.sock -- $http http://10.99.0.10:9000/ 2>$work/wrong.err &&
           grep -q 'Connection refused\|Failed to connect' $work/wrong.err"
nonblocking='
import errno, select, socket
s = socket.socket()
s.setblocking(False)
r = s.connect_ex(("10.99.0.10", 9000))
select.select([], [s], [], 5)
e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print(errno.errorcode.get(r, r), errno.errorcode.get(e, e), s.getpeername()[1] if e == 0 else "-")
'
check "non-blocking connect: EINPROGRESS, then SO_ERROR 0 and p1 in getpeername" \
  bash -c "[ \"\$(timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- $py -c '$nonblocking' 2>&1)\" = 'EINPROGRESS 0 9000' ]"
check "non-blocking connect of another AID: EINPROGRESS, then SO_ERROR ECONNREFUSED" \
  bash -c "timeout 20 ip netns exec $c1 $vpmtun exec --app wrong -s $work/c1-app.sock -- $py -c '$nonblocking' 2>&1 | grep -qx 'EINPROGRESS ECONNREFUSED -'"
check "the server counted the AID mismatch" bash -c "[ \"\$(stats | awk '\$1 == \"aid_mismatch\" {print \$2; exit}')\" -gt ${refused_before:-0} ]"

check "a plain client on p1 is refused" \
  bash -c "! ip netns exec $c1 curl -sS -m 5 http://10.99.0.10:9000/ >/dev/null 2>&1"
check "a plain client straight to the p2 from vpmtun check is refused" \
  bash -c "p2c=\$($vpmtun check -c $work/server.toml | sed -n 's/^ *app web .* p2 \([0-9]*\), cooperative .*/\1/p' | head -1);
           [ \"\$p2c\" = $p2 ] && ! ip netns exec $c1 curl -sS -m 5 http://10.99.0.10:$p2/ >/dev/null 2>&1"
check "the server counted the plain client and the un-negotiated p2" \
  bash -c "[ \"\$(stats | awk '\$1 == \"plain_clients\" {print \$2; exit}')\" -ge 1 ] &&
           [ \"\$(stats | awk '\$1 == \"not_negotiated\" {print \$2; exit}')\" -ge 1 ]"
check "a non-cooperative app on the same daemon still serves plain clients" \
  bash -c "ip netns exec $c1 curl -sS -m 5 http://10.99.0.10:8000/ | grep -q '\"app\":\"plain\"'"
check "a VPM with another key is refused" \
  bash -c "! timeout 20 ip netns exec $c2 $vpmtun exec --app good -s $work/c2-app.sock -- $http http://10.99.0.10:9000/ >/dev/null 2>&1 &&
           [ \"\$(stats | awk '\$1 == \"bad_mac\" {print \$2; exit}')\" -ge 1 ]"

bulk='
import hashlib, socket, sys, threading
n = 100 * 1024 * 1024
s = socket.create_connection(("10.99.0.10", 7000), timeout=60)
block = hashlib.sha256(b"vpmtun").digest() * 2048
sent = hashlib.sha256()
def send():
    left = n
    while left:
        b = block[:min(len(block), left)]
        s.sendall(b); sent.update(b); left -= len(b)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
got, total = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 16)
    if not b: break
    got.update(b); total += len(b)
t.join()
print(total, sent.hexdigest() == got.hexdigest())
'
check "100 MB each way through a cooperative connection, sha256 intact" \
  bash -c "[ \"\$(timeout 120 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- $py -c '$bulk')\" = '104857600 True' ]"

many='
import asyncio
async def one(i):
    r, w = await asyncio.open_connection("10.99.0.10", 9000)
    me = w.get_extra_info("sockname")
    w.write(b"GET / HTTP/1.0\r\n\r\n")
    body = (await r.read()).decode()
    w.close()
    return ("\"client\":\"%s:%d\"" % me) in body and w.get_extra_info("peername")[1] == 9000
async def main():
    got = await asyncio.gather(*[one(i) for i in range(200)], return_exceptions=True)
    print(sum(1 for g in got if g is True))
asyncio.run(main())
'
check "200 cooperative connections at once (non-blocking connects), each answered for its own port" \
  bash -c "[ \"\$(timeout 60 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- $py -c '$many')\" = 200 ]"

check "FIG 8: a client program in the server's own namespace, one VPM" \
  bash -c "timeout 20 ip netns exec $d $vpmtun exec --app local -s $work/server-app.sock -- $http http://10.99.0.10:9000/ | grep -q '\"client\":\"10.99.0.1:'"

check "vpmtun table shows the cooperative translations" \
  bash -c "in_ns $d $vpmtun table -s $work/server.sock | grep -q '^connected .*10.99.0.1:.*10.99.0.10:9000 .*local\|^connected .*10.99.0.10:9000 .*web'"

# The server's VPM restarts: the client's link to it breaks, new negotiations work.
kill -TERM "$server_pid"
for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
start_vpmtun "$d" "$work/server.log" "$work/server.toml"
server_pid=$daemon_pid
check "after the server's VPM restarted, new negotiations work and nothing hangs" \
  bash -c "for i in 1 2 3; do timeout 20 ip netns exec $c1 $vpmtun exec --app good -s $work/c1-app.sock -- $http http://10.99.0.10:9000/ | grep -q '\"app\":\"web\"' || exit 1; done"

kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
if [ "$fail" -ne 0 ]; then
  echo "--- server log"; tail -40 "$work/server.log"
  echo "--- c1 log"; tail -20 "$work/c1.log"
  echo "coop: $fail FAILED"
  exit 1
fi
echo "coop: all passed"
