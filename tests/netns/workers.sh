#!/usr/bin/env bash
# Workers: [tun] queues = 2, one process per queue (tun/supervisor.hpp).
#
#   c1  10.200.1.5 and .10-.49 ---- v1 ---- d: vpmtun run, TUN vpm0 (2 queues), 10.99.0.10:
#                                              7     echo          (the spread, the restart)
#                                              8     echo, "held"  (the table, the drain)
#                                              9000  forward -> 127.0.0.1:19001 (sends 25 MB)
#
# Checks: connections from 40 addresses are spread over both workers and all
# answered; stats are the workers' sum and the table their rows; four 25 MB
# downloads at once arrive intact and in order (tshark on the client's link:
# no out-of-order segment, no retransmission), so a flow stays on its
# worker; a killed worker starts again on its queue and serves; a reload
# reaches every worker; the hooks run once, in the supervisor; SIGTERM
# drains every worker; both write one --capture-tun file.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
source "$(dirname "$0")/common.sh"
skip_unless_netns workers
for tool in socat tshark sha256sum python3; do
  command -v "$tool" >/dev/null || { echo "workers: SKIPPED ($tool is not installed: tools/install-deps)"; exit 77; }
done
d="vpmw$$-d" c1="vpmw$$-c1"
work="$(mktemp -d)"
chmod 755 "$work"
daemon_pid="" pids=()
cleanup() {
  for p in "${pids[@]}" $daemon_pid; do kill "$p" 2>/dev/null || true; done
  for n in "$d" "$c1"; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in "$d" "$c1"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c1"
for i in $(seq 10 49); do ip -n "$c1" addr add "10.200.1.$i/24" dev eth0; done
head -c 25000000 /dev/urandom >"$work/file"
want=$(sha256sum <"$work/file" | cut -d' ' -f1)
ip netns exec "$d" socat TCP-LISTEN:19001,bind=127.0.0.1,fork,reuseaddr OPEN:"$work/file",rdonly &
pids+=($!)

write_config() {  # write_config [EXTRA-APP-TOML]
  cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[daemon]
on_ready = "echo ready >>$work/hooks"
on_stop = "echo stopped >>$work/hooks"
[tun]
name = "vpm0"
address = "10.99.0.1/24"
queues = 2
[[app]]
name = "echo"
aid = 1
listen = ["10.99.0.10:7"]
clients = ["10.200.0.0/16"]
serve = "echo"
[[app]]
name = "held"
aid = 2
listen = ["10.99.0.10:8"]
clients = ["10.200.0.0/16"]
serve = "echo"
[[app]]
name = "down"
aid = 3
listen = ["10.99.0.10:9000"]
clients = ["10.200.0.0/16"]
forward = "127.0.0.1:19001"
$1
TOML
}
write_config ""
start_vpmtun "$d" "$work/vpm.log" "$work/vpm.toml" --drain 20000 --capture-tun "$work/tun.pcap"
stats() { "$vpmtun" stats --json -s "$work/vpm.sock"; }
stat_of() {  # stat_of GROUP NAME
  stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1']['$2'])"
}

echo_from_all() {  # echo_from_all PORT: one echoed line from each of 40 addresses
  in_ns "$c1" python3 - "$1" <<'PY'
import socket, sys
ok = 0
for i in range(10, 50):
    try:
        s = socket.create_connection(("10.99.0.10", int(sys.argv[1])), 3, source_address=(f"10.200.1.{i}", 0))
        s.sendall(b"hello %d\n" % i)
        ok += s.recv(100) == b"hello %d\n" % i
        s.close()
    except OSError as e:
        print(f"10.200.1.{i}: {e}", file=sys.stderr)
print(ok)
PY
}
workers_up() { [ "$(pgrep -c -P "$daemon_pid")" -eq 2 ]; }
check "two worker processes under the supervisor" workers_up
check "40 addresses, 40 connections: all echoed" test "$(echo_from_all 7)" = 40
check "stats: the workers' sum (40 accepted, 2 workers)" \
  test "$(stat_of stack tcp_accepted)/$(stat_of daemon workers)" = "40/2"

# Ten held connections from ten addresses: the table joins both workers' rows.
in_ns "$c1" python3 - "$work/held-done" <<'PY' &
import socket, sys, time, os
socks = [socket.create_connection(("10.99.0.10", 8), 3, source_address=(f"10.200.1.{i}", 0)) for i in range(10, 20)]
for s in socks:
    s.sendall(b"x")
    s.recv(1)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
PY
held_pid=$!
sleep 1
table_joined() {
  local text json
  text="$("$vpmtun" table --app held -s "$work/vpm.sock")"
  json="$("$vpmtun" table --app held --json -s "$work/vpm.sock")"
  [ "$(tail -1 <<<"$text")" = "10 flows" ] && [ "$(grep -c ' held ' <<<"$text")" -eq 10 ] &&
    [ "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' <<<"$json")" -eq 10 ]
}
check "table: 10 held connections, rows of both workers joined (text and JSON)" table_joined
touch "$work/held-done"; wait "$held_pid" || true

# Four downloads at once, captured on the client's link.
in_ns "$c1" tshark -q -i eth0 -s 96 -w "$work/down.pcap" -f "tcp port 9000" 2>/dev/null &
shark=$!
sleep 2
for i in 10 11 12 13; do
  (in_ns "$c1" socat -u TCP:10.99.0.10:9000,bind=10.200.1.$i - | sha256sum | cut -d' ' -f1 >"$work/down.$i") &
done
wait_downloads() { for i in 10 11 12 13; do for _ in $(seq 600); do [ -s "$work/down.$i" ] && break; sleep 0.1; done; done; }
wait_downloads
sleep 1; kill "$shark"; wait "$shark" 2>/dev/null || true
intact() { for i in 10 11 12 13; do [ "$(cat "$work/down.$i")" = "$want" ] || return 1; done; }
check "4 x 25 MB down at once through forward: intact" intact
in_order() {
  local bad
  bad=$(tshark -r "$work/down.pcap" -Y "tcp.srcport == 9000 && (tcp.analysis.out_of_order || tcp.analysis.retransmission || tcp.analysis.lost_segment)" 2>/dev/null | wc -l)
  echo "  $(tshark -r "$work/down.pcap" 2>/dev/null | wc -l) packets captured, $bad out of order or resent"
  [ "$bad" -eq 0 ]
}
check "the client saw every segment in order (tshark), so each flow kept its worker" in_order

victim="$(pgrep -P "$daemon_pid" | head -1)"
kill -9 "$victim"
sleep 1.5
check "a killed worker starts again on its queue" workers_up
check "after the restart, 40 addresses are all echoed" test "$(echo_from_all 7)" = 40
check "stats count the restart" test "$(stat_of daemon worker_restarts)" = 1

write_config '[[app]]
name = "late"
aid = 4
listen = ["10.99.0.10:9"]
clients = ["10.200.0.0/16"]
serve = "echo"'
check "before the reload, port 9 is refused" test "$(echo_from_all 9 2>/dev/null)" = 0
check "vpmtun reload: every worker takes the new app" "$vpmtun" reload -s "$work/vpm.sock"
check "after it, 40 addresses on port 9 are all echoed" test "$(echo_from_all 9)" = 40

# SIGTERM while a connection is open: it is served to its end; new ones are refused.
in_ns "$c1" python3 - "$work/drain.up" <<'PY' >"$work/drain" &
import socket, sys, time
s = socket.create_connection(("10.99.0.10", 8), 3, source_address=("10.200.1.30", 0))
s.sendall(b"a"); s.recv(1)
open(sys.argv[1], "w").write("up\n")
time.sleep(2)
s.sendall(b"b"); print("held" if s.recv(1) == b"b" else "lost")
PY
drain_client=$!
# The connection is open before the signal, however slow the machine is.
for _ in $(seq 100); do [ -s "$work/drain.up" ] && break; sleep 0.1; done
kill -TERM "$daemon_pid"
sleep 0.5
check "draining: a new connection is refused" test "$(echo_from_all 8 2>/dev/null)" = 0
wait "$drain_client" || true
check "draining: the open connection is served to its end" test "$(cat "$work/drain")" = held
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=""
check "SIGTERM: the supervisor exits 0 once every worker is done" test "$rc" = 0
check "hooks ran once each, in the supervisor" test "$(tr '\n' ' ' <"$work/hooks")" = "ready stopped "
spread() {  # every worker's closing line counts packets
  grep -E "worker [01]: info: stopped: [0-9]+ packets in" "$work/vpm.log"
  [ "$(grep -cE "worker [01]: info: stopped: [1-9][0-9]* packets in" "$work/vpm.log")" -ge 2 ]
}
check "both workers carried traffic" spread
check "no TUN left behind" bash -c "! ip -n '$d' link show vpm0 2>/dev/null"

syn_sources() {  # the SYNs of the 40 addresses to port 7, in the file both workers wrote
  local n
  n=$(tcpdump -nn -t -r "$work/tun.pcap" 'tcp dst port 7 and tcp[tcpflags] & tcp-syn != 0' 2>/dev/null |
    awk '{ split($2, a, "."); print a[1] "." a[2] "." a[3] "." a[4] }' | sort -u | wc -l)
  echo "     SYNs to port 7 from $n addresses in tun.pcap"
  [ "$n" -eq 40 ]
}
check "--capture-tun: one file, both workers' packets (SYNs from all 40 addresses)" syn_sources
grep -iE "assert" "$work/vpm.log" && { echo "FAIL lwIP assertions in the log"; fail=$((fail + 1)); }
echo "workers: $fail failed"
[ "$fail" -eq 0 ]
