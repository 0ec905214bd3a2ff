#!/usr/bin/env bash
# A lossy client link: 1% of packets dropped each way between the client and
# vpmtun (nft numgen on d's interface towards c1). 30 MB each way through a
# forward app, with and without the TUN's offloads (large segments towards
# the client are cut by the kernel, and a lost piece means a retransmission),
# and 5 MB through the built-in echo (lwIP sends and receives at once): every
# byte arrives, in order (sha256). How long each took is printed (README
# "Performance", under loss).
#
#   c1  10.200.1.5 ---- v1 (1% loss each way) ---- d: vpmtun run, TUN vpm0, 10.99.0.10:
#                                                     9000 forward -> 127.0.0.1:19001 (sends the file)
#                                                     9001 forward -> 127.0.0.1:19002 (hashes what comes)
#                                                     7    echo
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
source "$(dirname "$0")/common.sh"
skip_unless_netns lossy
for tool in socat nft sha256sum; do
  command -v "$tool" >/dev/null || { echo "lossy: SKIPPED ($tool is not installed: tools/install-deps)"; exit 77; }
done
d="vpml$$-d" c1="vpml$$-c1"
work="$(mktemp -d)"
daemon_pid="" pids=()
cleanup() {
  for p in "${pids[@]}" $daemon_pid; do kill "$p" 2>/dev/null || true; done
  for n in "$d" "$c1"; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in "$d" "$c1"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
router_with_clients "$d" "$c1"
in_ns "$d" nft -f - <<'NFT'
table inet loss {
  chain in { type filter hook prerouting priority -300; iifname "v1" numgen random mod 100 == 0 drop; }
  chain out { type filter hook postrouting priority 300; oifname "v1" numgen random mod 100 == 0 drop; }
}
NFT
head -c 30000000 /dev/urandom >"$work/file"
want=$(sha256sum <"$work/file" | cut -d' ' -f1)
want5=$(head -c 5000000 "$work/file" | sha256sum | cut -d' ' -f1)
ip netns exec "$d" socat TCP-LISTEN:19001,bind=127.0.0.1,fork,reuseaddr OPEN:"$work/file",rdonly &
pids+=($!)
printf '#!/bin/sh\nsha256sum | cut -d" " -f1 >%s/uploaded\n' "$work" >"$work/sink"
chmod +x "$work/sink"
ip netns exec "$d" socat TCP-LISTEN:19002,bind=127.0.0.1,fork,reuseaddr EXEC:"$work/sink" &
pids+=($!)

for offload in true false; do
  cat >"$work/vpm.toml" <<TOML
[vpm]
control_socket = "$work/vpm.sock"
[tun]
queues = ${VPMTUN_TEST_QUEUES:-1}
name = "vpm0"
address = "10.99.0.1/24"
offload = $offload
[[app]]
name = "down"
aid = 1
listen = ["10.99.0.10:9000"]
clients = ["10.200.0.0/16"]
forward = "127.0.0.1:19001"
[[app]]
name = "up"
aid = 2
listen = ["10.99.0.10:9001"]
clients = ["10.200.0.0/16"]
forward = "127.0.0.1:19002"
[[app]]
name = "echo"
aid = 3
listen = ["10.99.0.10:7"]
clients = ["10.200.0.0/16"]
serve = "echo"
TOML
  start_vpmtun "$d" "$work/vpm.log" "$work/vpm.toml"
  t0=$SECONDS
  got=$(timeout 120 ip netns exec "$c1" socat -u TCP:10.99.0.10:9000 - | sha256sum | cut -d' ' -f1 || true)
  echo "  down: $((SECONDS - t0)) s"
  check "offload=$offload: 30 MB down through forward, intact" test "$got" = "$want"
  rm -f "$work/uploaded"
  t0=$SECONDS
  timeout 120 ip netns exec "$c1" socat -u OPEN:"$work/file",rdonly TCP:10.99.0.10:9001 || true
  echo "  up: $((SECONDS - t0)) s"
  for _ in $(seq 50); do [ -s "$work/uploaded" ] && break; sleep 0.1; done
  check "offload=$offload: 30 MB up through forward, intact" test "$(cat "$work/uploaded" 2>/dev/null)" = "$want"
  # Echo keeps its side open after the client's FIN: read as much as was sent.
  t0=$SECONDS
  got=$(timeout 120 ip netns exec "$c1" /usr/bin/python3 -c '
import hashlib, socket, sys, threading
data = open(sys.argv[1], "rb").read()[:5000000]
s = socket.create_connection(("10.99.0.10", 7), 60)
threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
h, n = hashlib.sha256(), 0
while n < len(data):
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(h.hexdigest())' "$work/file" || true)
  echo "  echo: $((SECONDS - t0)) s"
  check "offload=$offload: 5 MB through echo and back, intact" test "$got" = "$want5"
  kill "$daemon_pid"; wait "$daemon_pid" || true
  daemon_pid=""
done
grep -iE "assert" "$work/vpm.log" && { echo "FAIL lwIP assertions in the log"; fail=$((fail + 1)); }
echo "lossy: $fail failed"
[ "$fail" -eq 0 ]
