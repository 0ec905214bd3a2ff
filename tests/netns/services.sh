#!/usr/bin/env bash
# Every service answers on every virtual address, both families, TCP and UDP.
#
#   c1  10.200.1.5, fd00:200:1::5 ---- v1 -+
#                                          d: vpmtun run, TUN vpm0 10.99.0.1/24, fd00:99::1/64
#                                             virtual 10.99.0.{10,20,30}, fd00:99::{10,20,30}
#                                             backends on 127.0.0.1:19000 (TCP and UDP echo)
#
# On each of the six virtual addresses: echo on :7, http-info on :9000 and a
# forward to the echo backends on :8000, each over TCP and UDP (36 cases).
# Before issue 8, UDP answered only on the first virtual address: lwIP sent
# every reply through its default netif and dropped those it did not own.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
source "$(dirname "$0")/common.sh"
skip_unless_netns services
d="vpms$$-d" c1="vpms$$-c1"
work="$(mktemp -d)"
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for n in "$d" "$c1"; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null; done
  for n in "$d" "$c1"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c1"

v4=(10.99.0.10 10.99.0.20 10.99.0.30) v6=(fd00:99::10 fd00:99::20 fd00:99::30)
listens() {  # listens PORT: every virtual address on PORT, TCP and UDP
  local a out=()
  for a in "${v4[@]}"; do out+=("\"$a:$1\"" "\"$a:$1/udp\""); done
  for a in "${v6[@]}"; do out+=("\"[$a]:$1\"" "\"[$a]:$1/udp\""); done
  local IFS=,
  echo "[${out[*]}]"
}
cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[tun]
queues = ${VPMTUN_TEST_QUEUES:-1}
name = "vpm0"
address = "10.99.0.1/24"
address6 = "fd00:99::1/64"
[[app]]
name = "echo"
aid = 1
listen = $(listens 7)
clients = ["10.200.0.0/16", "fd00:200::/32"]
serve = "echo"
[[app]]
name = "info"
aid = 2
listen = $(listens 9000)
clients = ["10.200.0.0/16", "fd00:200::/32"]
serve = "http-info"
[[app]]
name = "relay"
aid = 3
listen = $(listens 8000)
clients = ["10.200.0.0/16", "fd00:200::/32"]
forward = "127.0.0.1:19000"
TOML
in_ns "$d" socat TCP-LISTEN:19000,fork,reuseaddr,bind=127.0.0.1 EXEC:cat >/dev/null 2>&1 &
in_ns "$d" socat UDP-RECVFROM:19000,fork,reuseaddr,bind=127.0.0.1 EXEC:cat >/dev/null 2>&1 &
start_vpmtun "$d" "$work/daemon.log" "$work/vpm.toml"

answers() {  # answers PROTO ADDR PORT EXPECTED: socat from c1 sends a line, the answer has EXPECTED
  local got
  got=$(echo "hello $2" | in_ns "$c1" timeout 5 socat -t 1 - "$1:$2:$3" 2>&1) || true
  grep -qF -- "$4" <<<"$got" || { echo "     got: ${got:0:120}"; return 1; }
}
for a in "${v4[@]}" "${v6[@]}"; do
  addr="$a"
  [[ "$a" == *:* ]] && addr="[$a]"
  for proto in TCP UDP; do
    check "$proto echo on $addr:7" answers "$proto" "$addr" 7 "hello $addr"
    if [ "$proto" = TCP ]; then
      check "TCP http-info on $addr:9000" \
        bash -c "in_ns() { ip netns exec \"\$@\"; }; in_ns '$c1' curl -s -m 5 'http://$addr:9000/' | grep -qF '\"app\":\"info\"'"
    else
      check "UDP http-info on $addr:9000" answers UDP "$addr" 9000 '"protocol":"udp"'
    fi
    check "$proto forward on $addr:8000" answers "$proto" "$addr" 8000 "hello $addr"
  done
done
check "stats: no datagram lwIP would not send" \
  bash -c "'$vpmtun' stats -s '$work/vpm.sock' --json | /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin)[\"stack\"]; sys.exit(s[\"udp_send_errors\"] != 0 or s[\"lwip_asserts\"] != 0)'"
[ "$fail" -eq 0 ] || { echo "--- daemon log"; tail -20 "$work/daemon.log"; }
echo "services: $fail failed"
[ "$fail" -eq 0 ]
