#!/usr/bin/env bash
# Unmodified programs under `vpmtun exec` share one port: the application library.
#
#   c1  10.200.1.5, fd00:200:1::5 ---- v1 -+
#                                          d: vpmtun run, TUN vpm0 10.99.0.1/24, fd00:99::1/64
#   c2  10.200.2.5, fd00:200:2::5 ---- v2 -+   virtual 10.99.0.10, fd00:99::10
#                                             apps blue (aid 101, c1) and green (aid 102, c2),
#                                             serve = "exec"; blue-2 (aid 101) shares blue's stream
#
# In d, programs from Debian run unmodified under `vpmtun exec`, every one
# of them on port 9000 (or 6379): python3 http.server, redis-server, nginx
# (a master and pre-forked workers), gunicorn, socat, and exec_probe.py,
# which prints what getsockname/getpeername/accept/recvfrom tell it. Each
# client must reach its own app's instance on vip:9000, the program must
# see 9000 and the client's real address, nothing may listen on the real
# 9000, and every way of failing must fail closed.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
skip_unless_netns exec
for tool in redis-server redis-cli nginx gunicorn socat curl; do
  command -v "$tool" >/dev/null || { echo "exec: SKIPPED ($tool is not installed: tools/install-deps)"; exit 77; }
done
py=/usr/bin/python3
probe="$here/exec_probe.py"
d="vpmx$$-d" c1="vpmx$$-c1" c2="vpmx$$-c2"
work="$(mktemp -d)"
chmod 755 "$work"
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for n in "$d" "$c1" "$c2"; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
  for n in "$d" "$c1" "$c2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c1" "$c2"

cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
app_socket = "$work/app.sock"
[tun]
name = "vpm0"
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
queues = ${VPMTUN_TEST_QUEUES:-1}
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000", "[fd00:99::10]:9000/udp", "10.99.0.10:6379"]
clients = ["10.200.1.0/24", "fd00:200:1::/64"]
serve = "exec"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000", "10.99.0.10:9000/udp", "[fd00:99::10]:9000", "[fd00:99::10]:9000/udp", "10.99.0.10:6379"]
clients = ["10.200.2.0/24", "fd00:200:2::/64"]
serve = "exec"
[[app]]
name = "blue-2"
aid = 101
listen = ["10.99.0.10:9000"]
clients = ["10.200.1.0/24"]
serve = "exec"
TOML
start_vpmtun "$d" "$work/daemon.log" "$work/vpm.toml"

# instance NAME APP [CMD...]: CMD under vpmtun exec in d, from $work/NAME
# (its log $work/NAME.log); sets pid_NAME (dashes as underscores) to its pid.
instance() {
  local name="$1" app="$2"
  shift 2
  mkdir -p "$work/$name"
  (cd "$work/$name" && exec ip netns exec "$d" "$vpmtun" exec --app "$app" -s "$work/app.sock" -- "$@") \
    >"$work/$name.log" 2>&1 &
  printf -v "pid_${name//-/_}" %s $!
}
# registered APP N: within 10 s, the daemon lists N registered sockets for APP.
registered() {
  local n
  for _ in $(seq 100); do
    n=$("$vpmtun" apps -s "$work/vpm.sock" --json |
      "$py" -c "import json,sys; print(sum(len(a.get('instances',[])) for a in json.load(sys.stdin) if a['name']=='$1'))")
    [ "$n" = "$2" ] && return 0
    sleep 0.1
  done
  echo "     $1 has $n registered sockets, not $2"; return 1
}
# stop PID...: the programs end, and the daemon has let go of their sockets.
stop() {
  local p left
  kill "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    left=$("$vpmtun" apps -s "$work/vpm.sock" --json | "$py" -c "
import json, sys
pids = {int(p) for p in sys.argv[1:]}
print(sum(i['pid'] in pids for a in json.load(sys.stdin) for i in a.get('instances', [])))" "$@")
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  echo "     the daemon still lists pids $*"
}
# ask NS PROTO ADDR PORT: one line from the server (socat sends an empty line).
ask() { echo | in_ns "$1" timeout 5 socat -t 2 - "$2:$3:$4" 2>/dev/null || true; }
has() {  # has TEXT WANT...: every WANT is in TEXT
  local w
  for w in "${@:2}"; do grep -qF -- "$w" <<<"$1" || { echo "     '$w' not in: ${1:0:200}"; return 1; }; done
}
nothing_on_9000() { ! in_ns "$d" ss -ltnuH | grep -qE ':9000\b'; }

echo "== python3 http.server, one per app, both on 9000"
echo blue >"$work/web-blue.who"; echo green >"$work/web-green.who"
mkdir -p "$work/web-blue" "$work/web-green"
mv "$work/web-blue.who" "$work/web-blue/who"; mv "$work/web-green.who" "$work/web-green/who"
head -c 30M /dev/urandom >"$work/web-blue/big"
instance web-blue blue "$py" -m http.server --bind :: 9000
instance web-green green "$py" -m http.server --bind :: 9000
check "both registered" registered blue 1
check "green registered" registered green 1
queues="${VPMTUN_TEST_QUEUES:-1}"
if [ "$queues" -gt 1 ]; then
  check "$queues workers serve, the library socket is the supervisor's" \
    bash -c "'$vpmtun' stats -s '$work/vpm.sock' | grep -qE '^  workers +$queues\$'"
fi
check "c1 reaches blue on 10.99.0.10:9000" has "$(in_ns "$c1" curl -s -m 5 http://10.99.0.10:9000/who)" blue
check "c2 reaches green on 10.99.0.10:9000" has "$(in_ns "$c2" curl -s -m 5 http://10.99.0.10:9000/who)" green
check "c1 reaches blue on [fd00:99::10]:9000" has "$(in_ns "$c1" curl -s -m 5 -g 'http://[fd00:99::10]:9000/who')" blue
check "c2 reaches green on [fd00:99::10]:9000" has "$(in_ns "$c2" curl -s -m 5 -g 'http://[fd00:99::10]:9000/who')" green
want=$(sha256sum <"$work/web-blue/big" | cut -d' ' -f1)
check "30 MB download intact (sha256)" has "$(in_ns "$c1" curl -sS -m 30 http://10.99.0.10:9000/big 2>&1 | sha256sum)" "$want"
check "the server's access log names the real clients" has "$(cat "$work/web-blue.log" "$work/web-green.log")" \
  "10.200.1.5" "fd00:200:1::5" "10.200.2.5" "fd00:200:2::5"
check "the server believes it serves on port 9000" has "$(cat "$work/web-blue.log")" "port 9000"
check "nothing listens on the real port 9000" nothing_on_9000
stop "$pid_web_blue" "$pid_web_green"

echo "== exec_probe.py: what the socket calls say"
instance probe blue "$py" "$probe" tcp 0.0.0.0 9000
instance probe6 green "$py" "$probe" tcp :: 9000 --dup --close-others
check "probes registered" registered green 1
registered blue 1 >/dev/null
for _ in $(seq 50); do grep -q "closed the others" "$work/probe6.log" && break; sleep 0.1; done
r=$(ask "$c1" TCP 10.99.0.10 9000)
check "IPv4 socket: accept and getpeername give the client, getsockname vip:9000" has "$r" \
  "peer=10.200.1.5:" "getpeername=10.200.1.5:" "getsockname=10.99.0.10:9000" "listening=0.0.0.0:9000"
check "getsockname of the listening socket says 0.0.0.0:9000" has "$(cat "$work/probe.log")" "listening 0.0.0.0:9000"
r=$(ask "$c2" TCP 10.99.0.10 9000)
check "dual-stack socket, IPv4 client: a mapped address, after dup3" has "$r" \
  "peer=[::ffff:10.200.2.5]:" "getsockname=[::ffff:10.99.0.10]:9000" "listening=[::]:9000"
r=$(ask "$c2" TCP6 '[fd00:99::10]' 9000)
check "dual-stack socket, IPv6 client" has "$r" "peer=[fd00:200:2::5]:" "getsockname=[fd00:99::10]:9000"
check "getsockname after dup3 says [::]:9000" has "$(cat "$work/probe6.log")" "dup listening [::]:9000"
check "closing every other descriptor (close_range) kept the registration" registered green 1
stop "$pid_probe" "$pid_probe6"

instance child blue "$py" "$probe" tcp 0.0.0.0 9000 --exec-child
for _ in $(seq 50); do grep -q "child closed the others" "$work/child.log" && break; sleep 0.1; done
check "exec'd child, which closed every other descriptor, is still registered" registered blue 1
r=$(ask "$c1" TCP 10.99.0.10 9000)
check "a child exec'd with the socket sees the client and 9000" has "$r" "peer=10.200.1.5:" "getsockname=10.99.0.10:9000"
check "its getsockname of the inherited socket says 0.0.0.0:9000" has "$(cat "$work/child.log")" "child listening 0.0.0.0:9000"
stop "$pid_child"

instance vbind blue "$py" "$probe" tcp 10.99.0.10 9000
registered blue 1 >/dev/null
check "bind to the virtual address itself (not an address of this host)" has \
  "$(ask "$c1" TCP 10.99.0.10 9000)" "peer=10.200.1.5:" "listening=10.99.0.10:9000"
stop "$pid_vbind"

echo "== UDP: recvfrom/recvmsg show the client, replies reach it"
instance udp-blue blue "$py" "$probe" udp :: 9000
instance udp-green green "$py" "$probe" udp 0.0.0.0 9000
registered blue 1 >/dev/null; check "UDP instances registered" registered green 1
r=$(ask "$c1" UDP 10.99.0.10 9000)$(ask "$c1" UDP 10.99.0.10 9000)
check "UDP, c1 to blue's dual-stack socket: both calls see the client" has "$r" \
  "peer=[::ffff:10.200.1.5]:" "via=recvfrom" "via=recvmsg"
r=$(ask "$c1" UDP6 '[fd00:99::10]' 9000)
check "UDP over IPv6 to blue" has "$r" "peer=[fd00:200:1::5]:"
r=$(ask "$c2" UDP 10.99.0.10 9000)
check "UDP, c2 to green's IPv4 socket" has "$r" "peer=10.200.2.5:"
stop "$pid_udp_blue" "$pid_udp_green"

echo "== data both ways: 20 MB up, sha256 from inside the program"
instance sha blue "$py" "$probe" sha 0.0.0.0 9000
registered blue 1 >/dev/null
head -c 20M /dev/urandom >"$work/up"
want=$(sha256sum <"$work/up" | cut -d' ' -f1)
check "20 MB upload intact (sha256 in the program)" has \
  "$(in_ns "$c1" timeout 30 socat -t 10 - TCP:10.99.0.10:9000 <"$work/up")" "$want"
stop "$pid_sha"

echo "== redis-server: two unmodified instances on 6379"
# Protected mode refuses clients that are not on loopback: it sees them as they are.
instance redis-blue blue redis-server --port 6379 --save '' --appendonly no --protected-mode no
instance redis-green green redis-server --port 6379 --save '' --appendonly no --protected-mode no
check "both redis registered" registered green 2
redis() { in_ns "$1" redis-cli -h 10.99.0.10 -p 6379 "${@:2}" 2>&1 || true; }
redis "$c1" SET who blue >/dev/null
redis "$c2" SET who green >/dev/null
check "c1's redis holds blue's key" has "$(redis "$c1" GET who)" blue
check "c2's redis holds green's key" has "$(redis "$c2" GET who)" green
check "redis CLIENT LIST: addr is the client, laddr vip:6379" has "$(redis "$c1" CLIENT LIST)" \
  "addr=10.200.1.5:" "laddr=10.99.0.10:6379"
check "redis INFO says tcp_port 6379" has "$(redis "$c1" INFO server)" "tcp_port:6379"
stop "$pid_redis_blue" "$pid_redis_green"

echo "== nginx: master and two pre-forked workers, an SO_REUSEPORT group (a socket per worker)"
mkdir -p "$work/nginx/logs" "$work/nginx/html"
echo "nginx blue" >"$work/nginx/html/index.html"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 64; }
http {
  log_format who '\$remote_addr worker \$pid';
  access_log $work/nginx/logs/access.log who;
  client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
  server { listen 9000 reuseport; listen [::]:9000; root $work/nginx/html; }
}
NGINX
instance nginx blue nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
check "nginx registered its listens (IPv4: one per worker)" registered blue 3
ok=0
for _ in $(seq 20); do in_ns "$c1" curl -s -m 5 http://10.99.0.10:9000/ | grep -q "nginx blue" && ok=$((ok + 1)); done
check "20 of 20 requests to nginx answered" test "$ok" = 20
check "over IPv6 too" has "$(in_ns "$c1" curl -s -m 5 -g 'http://[fd00:99::10]:9000/')" "nginx blue"
check "nginx's access log names the client" has "$(cat "$work/nginx/logs/access.log")" "10.200.1.5" "fd00:200:1::5"
check "both workers' SO_REUSEPORT sockets took connections" \
  test "$(grep '^10.200.1.5 ' "$work/nginx/logs/access.log" | awk '{ print $3 }' | sort -u | wc -l)" = 2
check "c2 does not reach blue's nginx (no green instance: refused)" \
  sh -c "! ip netns exec $c2 curl -s -m 3 http://10.99.0.10:9000/"
stop "$pid_nginx"

echo "== gunicorn, two pre-forked workers; socat"
cat >"$work/wsgi_app.py" <<'PY'
import os, time
def app(environ, start_response):
    time.sleep(0.3)  # a sync worker busy with one request leaves the next to the other worker
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"worker {os.getpid()} for {environ['REMOTE_ADDR']} on {environ['SERVER_PORT']}\n".encode()]
PY
instance gunicorn green gunicorn --chdir "$work" -w 2 -b 0.0.0.0:9000 wsgi_app:app
check "gunicorn registered" registered green 1
# Four requests at once: whichever worker accepts first is busy for 0.3 s, so the other must
# accept too. Sequential requests may all land on one worker; that is the kernel's choice.
r=$(for _ in 1 2 3 4; do in_ns "$c2" curl -s -m 5 http://10.99.0.10:9000/ & done; wait)
check "gunicorn's workers see the client and port 9000" has "$r" "for 10.200.2.5 on 9000"
check "both gunicorn workers took connections" test "$(grep -o 'worker [0-9]*' <<<"$r" | sort -u | wc -l)" = 2
stop "$pid_gunicorn"
instance socat blue socat TCP6-LISTEN:9000,ipv6only=0,fork,reuseaddr SYSTEM:'echo socat-blue'
registered blue 1 >/dev/null
check "socat answers c1" has "$(ask "$c1" TCP 10.99.0.10 9000)" socat-blue
stop "$pid_socat"

echo "== instances and apps of one aid take connections in turn; one killed"
instance a1 blue "$py" "$probe" tcp 0.0.0.0 9000
instance a2 blue "$py" "$probe" tcp 0.0.0.0 9000
instance b1 blue-2 "$py" "$probe" tcp 0.0.0.0 9000
registered blue 2 >/dev/null; check "blue-2 registered beside blue's two" registered blue-2 1
r=""
for _ in $(seq 12); do r+="$(ask "$c1" TCP 10.99.0.10 9000)"$'\n'; done
check "all three instances (two apps, one aid) took connections" \
  test "$(grep -o 'pid=[0-9]*' <<<"$r" | sort -u | wc -l)" = 3
check "blue-2 took half of them (apps in turn)" test "$(grep -c "pid=$pid_b1 " <<<"$r")" = 6
kill -9 "$pid_a1"
check "a killed instance is removed at once" registered blue 1
r=""
for _ in $(seq 6); do r+="$(ask "$c1" TCP 10.99.0.10 9000)"$'\n'; done
check "every connection is still answered" test "$(grep -c 'peer=10.200.1.5' <<<"$r")" = 6
stop "$pid_a2" "$pid_b1"
check "no instance left" registered blue 0
t0=$(date +%s%N)
check "with none left, c1 is refused at once" sh -c "! ip netns exec $c1 curl -s -m 3 http://10.99.0.10:9000/"
check "  (within a second)" test $(( ($(date +%s%N) - t0) / 1000000 )) -lt 1000

echo "== a hostile peer on the library socket"
"$py" - "$work/app.sock" <<'PY'
import os, socket, struct, sys
path = sys.argv[1]
def peer():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    return s
hello = bytes([1, 1]) + struct.pack(">H", 6) + struct.pack(">H", 4) + b"blue" + struct.pack(">H", 0)
bind = bytes([1, 3]) + struct.pack(">H", 22) + bytes([6, 0]) + bytes(16) + struct.pack(">HH", 9000, 1)
cases = [b"", b"\x01", os.urandom(3000), bytes([2, 1, 0, 0]), hello[:-1], bind, hello + b"x"]
def attempt(*steps):  # the daemon may close on us at any step: that is its right
    try:
        for step in steps:
            step()
    except OSError:
        pass
for c in cases:
    s = peer()
    s.settimeout(2)
    attempt(lambda: s.send(c), lambda: s.recv(100))
    s.close()
s = peer()
s.settimeout(2)
attempt(lambda: s.send(hello), lambda: s.recv(2048),
        # stdin, not a socket, as the registered socket
        lambda: s.sendmsg([bind], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))]),
        lambda: s.recv(2048))
many = [peer() for _ in range(200)]  # connections that never speak
PY
check "the daemon counted the bad messages and still serves" has \
  "$("$vpmtun" stats -s "$work/vpm.sock")" "bad_messages"
check "  (bad_messages > 0)" test "$("$vpmtun" stats -s "$work/vpm.sock" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["library"]["bad_messages"] > 0)')" = True
instance after blue "$py" "$probe" tcp 0.0.0.0 9000
check "an instance registers after all that" registered blue 1
check "and is reached" has "$(ask "$c1" TCP 10.99.0.10 9000)" "peer=10.200.1.5:"
stop "$pid_after"

echo "== an app added by reload (with workers: its peer table reaches each one)"
cat >>"$work/vpm.toml" <<TOML
[[app]]
name = "red"
aid = 103
listen = ["10.99.0.10:7000"]
clients = ["10.200.1.0/24"]
serve = "exec"
TOML
check "vpmtun reload adds red" "$vpmtun" reload -s "$work/vpm.sock"
instance red red "$py" "$probe" tcp 0.0.0.0 7000
check "red registered" registered red 1
r=""
for _ in $(seq 8); do r+="$(ask "$c1" TCP 10.99.0.10 7000)"$'\n'; done
check "c1 reaches red on 7000, every time" test "$(grep -c 'peer=10.200.1.5' <<<"$r")" = 8
stop "$pid_red"

echo "== never fail open"
out=$(in_ns "$d" "$vpmtun" exec --app nosuch -s "$work/app.sock" -- "$py" "$probe" tcp 0.0.0.0 9000 2>&1; echo "exit=$?")
check "unknown app: not run, exit 125, says why" has "$out" "exit=125" "no app 'nosuch'"
out=$(in_ns "$d" "$vpmtun" exec --app blue -s "$work/none.sock" -- "$py" "$probe" tcp 0.0.0.0 9000 2>&1; echo "exit=$?")
check "no daemon: not run, exit 125, says why" has "$out" "exit=125" "no vpmtun daemon"
out=$(in_ns "$d" setpriv --reuid=65534 --regid=65534 --clear-groups "$vpmtun" exec --app blue -s "$work/app.sock" -- "$py" "$probe" tcp 0.0.0.0 9000 2>&1; echo "exit=$?")
check "user not allowed: not run, exit 125, says why" has "$out" "exit=125" "uid 65534 may not run"
if command -v gcc >/dev/null && printf 'int main(void){return 0;}\n' | gcc -static -x c -o "$work/static" - 2>/dev/null; then
  out=$(in_ns "$d" "$vpmtun" exec --app blue -s "$work/app.sock" -- "$work/static" 2>&1; echo "exit=$?")
  check "statically linked program: not run, exit 126, says why" has "$out" "exit=126" "statically linked"
else
  echo "skip statically linked program (no gcc -static here)"
fi
out=$(in_ns "$d" "$vpmtun" exec --app blue -s "$work/app.sock" -- "$py" -c 'import sys; sys.exit(7)' 2>&1; echo "exit=$?")
check "the program's exit status is vpmtun exec's" has "$out" "exit=7"
# The daemon goes away after the program started: its bind fails, closed.
instance late blue "$py" -c "
import socket, time, sys
time.sleep(1.5)
try:
    socket.socket().bind(('0.0.0.0', 9000))
    print('BOUND')
except OSError as e:
    print('bind failed:', e.strerror)"
sleep 0.3
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
wait "$pid_late" 2>/dev/null || true
check "daemon gone: the program's bind fails (EADDRNOTAVAIL), stderr says why" has "$(cat "$work/late.log")" \
  "bind failed: Cannot assign requested address" "no vpmtun daemon"
check "and nothing was bound on 9000" nothing_on_9000

grep -E "assert|ERROR|AddressSanitizer|runtime error" "$work/daemon.log" "$work"/*.log && fail=$((fail + 1))
if [ "$fail" -ne 0 ]; then
  echo "--- daemon log (last 30 lines)"; tail -n 30 "$work/daemon.log"
  echo "exec: $fail FAILED"
  exit 1
fi
echo "exec: all passed"
