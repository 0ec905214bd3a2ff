#!/usr/bin/env bash
# Reloading a running daemon under load, with real clients.
#
#   c1  10.200.1.5 ---------------- v1 -+
#                                       d: vpmtun run, TUN vpm0 10.99.0.1/24,
#   c2  10.200.2.9, 10.200.3.3 ---- v2 -+  iperf3 servers on 127.0.0.1:5201/5202
#
# While an iperf3 stream runs from c1 through a forward app (bulk) and three
# loops of short HTTP connections run (c1; c2 from 10.200.2.9; c2 from
# 10.200.3.3), the configuration is reloaded three times:
#   1. `vpmtun reload`: app red added for 10.200.3.3 (refused until then);
#   2. SIGHUP: c1's rules moved, from blue to green on :9000 and from bulk to
#      bulk2 on :5201 (the running stream must stay with bulk);
#   3. `vpmtun reload`: red removed, and bulk, which still carries the stream.
# A second stream (a socket sending 150 MB to an echo backend and checking
# what comes back with sha256) goes through the app `stream`, moved and
# removed like bulk.
# In between, two bad files are refused (a syntax error; a change of
# tun.mtu, which needs a restart) and must change nothing.
# Checks: iperf3 ends without error; the echoed stream is intact;
# every short connection is answered by the app the rules of its moment
# name (either rule set while a reload is under way), and none fails except
# those the rules refuse; apps that stay keep their p2s; bulk and stream
# drain and are gone once their streams have ended.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
# KEEP=1 keeps the work directory (configs, daemon log, loop logs) in /tmp/vpmr-keep.
set -euo pipefail
vpmtun="$(realpath "$1")"
source "$(dirname "$0")/common.sh"
skip_unless_netns reload
d="vpmr$$-d" c1="vpmr$$-c1" c2="vpmr$$-c2"
work="$(mktemp -d)"
daemon_pid=""
cleanup() {
  touch "$work/stop"
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for n in "$d" "$c1" "$c2"; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null; done
  for n in "$d" "$c1" "$c2"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then rm -rf /tmp/vpmr-keep; mv "$work" /tmp/vpmr-keep; else rm -rf "$work"; fi
}
trap cleanup EXIT

for n in "$d" "$c1" "$c2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$d" link add v1 type veth peer name eth0 netns "$c1"
ip -n "$d" link add v2 type veth peer name eth0 netns "$c2"
ip -n "$d" addr add 10.200.1.1/24 dev v1
ip -n "$d" addr add 10.200.2.1/24 dev v2; ip -n "$d" addr add 10.200.3.1/24 dev v2
ip -n "$d" link set v1 up; ip -n "$d" link set v2 up
ip -n "$c1" addr add 10.200.1.5/24 dev eth0
ip -n "$c2" addr add 10.200.2.9/24 dev eth0; ip -n "$c2" addr add 10.200.3.3/24 dev eth0
ip -n "$c1" link set eth0 up; ip -n "$c2" link set eth0 up
ip -n "$c1" route add default via 10.200.1.1; ip -n "$c2" route add default via 10.200.2.1
in_ns "$d" sysctl -qw net.ipv4.ip_forward=1

write_config() {  # write_config STAGE (0: start, then the state after each reload)
  local stage="$1" c1_app_9000=blue c1_app_5201=bulk
  [ "$stage" -ge 2 ] && c1_app_9000=green c1_app_5201=bulk2
  {
    cat <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[tun]
name = "vpm0"
address = "10.99.0.1/24"
queues = ${VPMTUN_TEST_QUEUES:-1}
[[app]]
name = "blue"
aid = 101
listen = ["10.99.0.10:9000"]
clients = [$([ "$c1_app_9000" = blue ] && echo '"10.200.1.0/24", ')"10.200.9.0/24"]
serve = "http-info"
[[app]]
name = "green"
aid = 102
listen = ["10.99.0.10:9000"]
clients = [$([ "$c1_app_9000" = green ] && echo '"10.200.1.0/24", ')"10.200.2.9"]
serve = "http-info"
TOML
    if [ "$stage" -eq 1 ] || [ "$stage" -eq 2 ]; then
      cat <<TOML
[[app]]
name = "red"
aid = 103
listen = ["10.99.0.10:9000"]
clients = ["10.200.3.3"]
serve = "http-info"
TOML
    fi
    if [ "$stage" -le 2 ]; then
      cat <<TOML
[[app]]
name = "bulk"
aid = 201
listen = ["10.99.0.10:5201"]
clients = [$([ "$c1_app_5201" = bulk ] && echo '"10.200.1.0/24", ')"10.200.9.0/24"]
forward = "127.0.0.1:5201"
[[app]]
name = "stream"
aid = 301
listen = ["10.99.0.10:7000"]
clients = [$([ "$c1_app_5201" = bulk ] && echo '"10.200.1.0/24", ')"10.200.9.0/24"]
forward = "127.0.0.1:7001"
TOML
    fi
    if [ "$stage" -ge 2 ]; then
      cat <<TOML
[[app]]
name = "bulk2"
aid = 202
listen = ["10.99.0.10:5201"]
clients = ["10.200.1.0/24"]
forward = "127.0.0.1:5202"
[[app]]
name = "stream2"
aid = 302
listen = ["10.99.0.10:7000"]
clients = ["10.200.1.0/24"]
forward = "127.0.0.1:7002"
TOML
    fi
  } >"$work/vpm.toml"
}

# Background processes start through ip netns exec itself, so that their pid
# is theirs (a backgrounded shell function would be a subshell).
ip netns exec "$d" iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
ip netns exec "$d" iperf3 -s -B 127.0.0.1 -p 5202 >/dev/null 2>&1 &
ip netns exec "$d" socat -t 60 TCP-LISTEN:7001,fork,reuseaddr,bind=127.0.0.1 EXEC:cat >/dev/null 2>&1 &
ip netns exec "$d" socat -t 60 TCP-LISTEN:7002,fork,reuseaddr,bind=127.0.0.1 EXEC:cat >/dev/null 2>&1 &
write_config 0
ip netns exec "$d" "$vpmtun" run -c "$work/vpm.toml" 2>>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 50); do ip -n "$d" route show 10.99.0.0/24 | grep -q vpm0 && break; sleep 0.1; done
sleep 0.5

ask() { "$vpmtun" "$@" -s "$work/vpm.sock"; }
now() { date +%s%N; }
p2s() {  # p2s: "name:p2s" of each app that is not draining, one per line
  ask apps --json | /usr/bin/python3 -c '
import json, sys
for a in json.load(sys.stdin):
    if not a["draining"]:
        print(a["name"] + ":" + ",".join(a["p2s"]))'
}
same_p2s() {  # same_p2s BEFORE AFTER: apps in both kept their p2s
  local line name bad=0
  while IFS= read -r line; do
    name=${line%%:*}
    if grep -q "^$name:" <<<"$2" && ! grep -qxF "$line" <<<"$2"; then
      echo "     $name moved: $line -> $(grep "^$name:" <<<"$2")"; bad=1
    fi
  done <<<"$1"
  [ "$bad" -eq 0 ]
}

# The loops: one short connection after another until $work/stop appears,
# each logged as "START_NS END_NS RESULT" (the app that answered, refused
# for a RST to the SYN, or error-CURLCODE).
cat >"$work/loop.sh" <<'SH'
out="$1" stop="$2"
shift 2
while [ ! -e "$stop" ]; do
  s=$(date +%s%N)
  rc=0
  body=$(curl -s -m 5 "$@" 2>/dev/null) || rc=$?
  e=$(date +%s%N)
  app=$(sed -n 's/.*"app":"\([a-z0-9]*\)".*/\1/p' <<<"$body")
  if [ "$rc" -eq 0 ]; then r=${app:-empty}; elif [ "$rc" -eq 7 ]; then r=refused; else r=error-$rc; fi
  echo "$s $e $r" >>"$out"
  sleep 0.05
done
SH
ip netns exec "$c1" bash "$work/loop.sh" "$work/loop-c1" "$work/stop" http://10.99.0.10:9000/ &
ip netns exec "$c2" bash "$work/loop.sh" "$work/loop-c2" "$work/stop" http://10.99.0.10:9000/ &
ip netns exec "$c2" bash "$work/loop.sh" "$work/loop-c3" "$work/stop" --interface 10.200.3.3 http://10.99.0.10:9000/ &
ip netns exec "$c1" iperf3 -c 10.99.0.10 -p 5201 -t 30 -b 400M -J >"$work/iperf3.json" 2>&1 &
iperf_pid=$!
# iperf3 checks no data, and its server stops counting when the client's
# end-of-test message arrives, which through any relay (socat too) may
# overtake the last data in flight. So a second stream, checked byte for
# byte: 150 MB at 5 MB/s through an echo backend of the app `stream`, which
# moves and is removed like bulk.
cat >"$work/stream.py" <<'PY'
import hashlib, os, socket, sys, threading, time
s = socket.create_connection(("10.99.0.10", 7000))
sent, got = hashlib.sha256(), hashlib.sha256()
n_got = 0
def receive():
    global n_got
    while True:
        b = s.recv(1 << 16)
        if not b:
            return
        got.update(b)
        n_got += len(b)
reader = threading.Thread(target=receive)
reader.start()
start = time.monotonic()
for i in range(150 * 16):  # 64 KiB chunks, 80 a second
    chunk = os.urandom(1 << 16)
    sent.update(chunk)
    s.sendall(chunk)
    time.sleep(max(0, start + (i + 1) / 80 - time.monotonic()))
s.shutdown(socket.SHUT_WR)
reader.join()
print(f"{150 << 20} bytes sent, {n_got} echoed, sha256 {'equal' if sent.digest() == got.digest() else 'DIFFERENT'}")
sys.exit(0 if sent.digest() == got.digest() else 1)
PY
ip netns exec "$c1" /usr/bin/python3 "$work/stream.py" >"$work/stream.out" 2>&1 &
stream_pid=$!
# The reloads happen at set times after the streams start (30 s each), so
# that a slow daemon (a sanitizer build) still has them in flight at the third.
started=$SECONDS
at_second() { local left=$((started + $1 - SECONDS)); [ "$left" -gt 0 ] && sleep "$left"; return 0; }
at_second 2
: >"$work/reloads"

reload_cmd() {  # reload_cmd STAGE: the file of STAGE, then `vpmtun reload`
  local t0 out rc=0
  write_config "$1"
  t0=$(now)
  out=$(ask reload 2>&1) || rc=$?
  echo "$t0 $(now) $1" >>"$work/reloads"
  echo "     $out"
  [ "$rc" -eq 0 ] && [[ "$out" == "reloaded $work/vpm.toml: "* ]]
}
before=$(p2s)
check "reload 1 (vpmtun reload): red added" reload_cmd 1
after=$(p2s)
check "reload 1: the apps that stay keep their p2s" same_p2s "$before" "$after"
at_second 5

refused_and_kept() {  # refused_and_kept WHAT: reload exits 1 naming file, line and key; nothing changes
  local out rc=0 before
  before=$(p2s)
  out=$(ask reload 2>&1) || rc=$?
  echo "$out" | sed 's/^/     /'
  [ "$rc" -eq 1 ] && grep -qF "$work/vpm.toml$1" <<<"$out" && [ "$(p2s)" = "$before" ]
}
write_config 1
sed -i 's/^serve = "http-info"$/serve = "http-info/' "$work/vpm.toml"  # an unterminated string
check "a broken file: reload exits 1 with file:line, the rules stay" refused_and_kept ":12:"
write_config 1
sed -i 's/^name = "vpm0"$/name = "vpm0"\nmtu = 9000/' "$work/vpm.toml"
check "tun.mtu changed: reload exits 1 naming it, the rules stay" refused_and_kept ":5: tun.mtu: cannot change"
at_second 7

sighup() {  # SIGHUP with the file of stage 2; done once apps shows bulk2
  local t0
  write_config 2
  t0=$(now)
  kill -HUP "$daemon_pid"
  for _ in $(seq 50); do
    if ask apps --json | grep -q '"name":"bulk2"'; then
      echo "$t0 $(now) 2" >>"$work/reloads"
      return 0
    fi
    sleep 0.1
  done
  return 1
}
before=$(p2s)
check "reload 2 (SIGHUP): c1 moved from blue to green and from bulk to bulk2" sighup
after=$(p2s)
check "reload 2: the apps that stay keep their p2s" same_p2s "$before" "$after"
grep -F "SIGHUP: reloaded" "$work/daemon.log" | sed 's/^/     /'
at_second 11

before=$(p2s)
check "reload 3 (vpmtun reload): red, bulk and stream removed, bulk and stream still busy" reload_cmd 3
after=$(p2s)
check "reload 3: the apps that stay keep their p2s" same_p2s "$before" "$after"
draining() {  # bulk and stream are listed as draining, with their flows
  ask apps --json >"$work/apps.json"
  /usr/bin/python3 - "$work/apps.json" <<'PY'
import json, sys
apps = {a["name"]: a for a in json.load(open(sys.argv[1]))}
for n in ("bulk", "stream"):
    a = apps.get(n, {})
    print(f"     {n}: draining {a.get('draining')}, {a.get('active')} active flows")
sys.exit(0 if all(n in apps and apps[n]["draining"] and apps[n]["active"] >= 1
                  for n in ("bulk", "stream")) else 1)
PY
}
check "bulk and stream drain: listed as draining, their flows still open" draining

iperf_intact() {
  local rc=0
  wait "$iperf_pid" || rc=$?
  /usr/bin/python3 - "$work/iperf3.json" "$rc" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
end = r.get("end", {})
sent, got = end.get("sum_sent", {}).get("bytes", 0), end.get("sum_received", {}).get("bytes", 0)
print(f"     iperf3 exit {sys.argv[2]}: {sent} bytes sent, {got} received, "
      f"{end.get('sum_received', {}).get('bits_per_second', 0) / 1e6:.0f} Mbit/s"
      + (f"; error: {r['error']}" if "error" in r else ""))
# What the server did not count is what its end-of-test race left in flight:
# at most what the path buffers (lwIP's 4 MiB window, the sockets' buffers).
sys.exit(0 if sys.argv[2] == "0" and "error" not in r and sent > 0 and sent - got < 8 << 20 else 1)
PY
}
check "the iperf3 stream across three reloads ends without error" iperf_intact
stream_intact() {
  local rc=0
  wait "$stream_pid" || rc=$?
  sed 's/^/     /' "$work/stream.out"
  [ "$rc" -eq 0 ]
}
check "150 MB echoed across the three reloads, sha256 intact" stream_intact
touch "$work/stop"
sleep 1

timeline() {  # every short connection got what the rules of its moment say
  /usr/bin/python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
reloads = [tuple(int(x) for x in line.split()) for line in open(f"{work}/reloads")]
print("     reloads took " + ", ".join(f"{(t1 - t0) / 1e6:.0f} ms" for t0, t1, _ in reloads)
      + " (vpmtun reload's round trip; SIGHUP: until apps showed it)")
# The answer each loop must get under the rules of each stage.
expect = {
    "loop-c1": {0: "blue", 1: "blue", 2: "green", 3: "green"},
    "loop-c2": {0: "green", 1: "green", 2: "green", 3: "green"},
    "loop-c3": {0: "refused", 1: "red", 2: "red", 3: "refused"},
}
bad = 0
for loop, by_stage in expect.items():
    seen = {}
    for line in open(f"{work}/{loop}"):
        start, end, got = line.split()
        start, end = int(start), int(end)
        # Stages whose rules may have met this connection: the last reload
        # done before it started, and each one under way while it ran.
        stages = {0}
        for t0, t1, stage in reloads:
            if t1 < start:
                stages = {stage}
            elif t0 <= end:
                stages.add(stage)
        ok = got in {by_stage[s] for s in stages}
        seen[got] = seen.get(got, 0) + 1
        if not ok:
            bad += 1
            if bad <= 10:
                print(f"     {loop}: got {got}, rules say {sorted(by_stage[s] for s in stages)}")
    print(f"     {loop}: " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items())))
sys.exit(1 if bad else 0)
PY
}
check "short connections: each answered by its app of the moment, refused only when the rules say" timeline

drained() {  # once their streams are over, bulk and stream go within a few seconds
  for _ in $(seq 30); do
    if ! ask apps --json | grep -qE '"name":"(bulk|stream)"'; then
      grep -F "has drained" "$work/daemon.log" | sed 's/^/     /'
      return 0
    fi
    sleep 0.2
  done
  return 1
}
check "bulk and stream are gone once their streams have ended" drained
counted() {  # stats: three reloads taken, two refused
  local got
  got=$(ask stats --json | /usr/bin/python3 -c 'import json, sys; d = json.load(sys.stdin)["daemon"]; print(d["reloads"], d["reloads_refused"])')
  echo "     reloads, refused: $got"
  [ "$got" = "3 2" ]
}
check "stats count the reloads taken and refused" counted
check "no lwIP assertion" bash -c "! grep -F 'lwIP assertion' '$work/daemon.log'"

kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=""
check "SIGTERM: the daemon exits 0" test "$rc" -eq 0
echo "reload: $fail failed"
[ "$fail" -eq 0 ]
