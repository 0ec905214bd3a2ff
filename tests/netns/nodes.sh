#!/usr/bin/env bash
# Several nodes behind equal-cost routes (README "Running several nodes").
#
#   c1 10.200.1.5, sources 10.1.1.x -- v1 -+       +- n1 -- node1 10.210.1.2
#                                          r ------+- n2 -- node2 10.210.2.2
#   c2 10.200.2.5, sources 10.2.2.x -- v2 -+       +- n3 -- node3 10.210.3.2
#
# Every node runs `vpmtun run` with the same file: TUN vpm0 10.99.0.1/24,
# apps red and blue (http-info on 10.99.0.10:80, chosen by the client's
# address) and stream (echo on :7000); kernel: per-connection allocation;
# frr: per-app, with a cooperative app (http-info on :9000) that client
# programs reach through their own VPMs in c1 and c2. Each node
# has its own host name (its [daemon] name) and its own mount of $work/run
# (the control socket), so one file serves all three. The router r routes
# 10.99.0.0/24 over equal-cost routes to the nodes, hashing on addresses,
# and marks each connection with the node it first went to. Two routing
# layers (the second argument):
#   kernel  nexthop group 100, type resilient; the nodes' hooks
#           (nodes_route.sh) put the node in it on_ready, and on_drain pin
#           the node's connections to it (rule fwmark N) and take it out.
#   frr     bgpd and zebra in every namespace; the hooks are the shipped
#           example tools/examples/frr-announce, announcing the prefix on_ready
#           and withdrawing it on_drain; the router pins every connection to
#           its node (its routes are not resilient).
# Checked:
#   - requests from 80 addresses spread over the three nodes (counts from
#     the answers and from each node's stats), each answered by its app;
#   - frr: cooperative connections work, the negotiation and the data
#     connection reaching the same node (the hash is on addresses);
#   - a node drained with SIGTERM leaves the routes before its listeners
#     close; its open connections finish, new ones go to the others, none
#     breaks anywhere;
#   - the node added back takes new clients but no open connection moves;
#   - a node killed with SIGKILL (kernel: the test then does what a routing
#     daemon's hold timer would; frr: its bgpd withdraws the prefix when
#     the TUN goes): exactly its own connections break.
#
# Every namespace is made here and deleted on exit. Without root: exit 77.
set -euo pipefail
vpmtun="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
mode="${2:-kernel}"
skip_unless_netns "nodes ($mode)"
command -v nft >/dev/null || { echo "nodes: SKIPPED (nft is not installed: tools/install-deps)"; exit 77; }
if [ "$mode" = frr ] && [ ! -x /usr/lib/frr/bgpd ]; then
  echo "nodes: SKIPPED (FRR is not installed: tools/install-deps)"; exit 77
fi
examples="$(cd "$here/../../tools/examples" && pwd)"
py=/usr/bin/python3
r="vpmn$$-r" c1="vpmn$$-c1" c2="vpmn$$-c2"
nodes=("" "vpmn$$-n1" "vpmn$$-n2" "vpmn$$-n3")
work="$(mktemp -d)"
chmod 755 "$work"
mkdir -p "$work/run" "$work/state" "$work/frr"
pid=("" "" "" "")
holders=()
cleanup() {
  for p in "${pid[@]}" "${holders[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  for n in "${nodes[@]:1}" "$c1" "$c2" "$r"; do
    ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for n in "${nodes[@]:1}" "$c1" "$c2" "$r"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the network -------------------------------------------------------------
router_with_clients "$r" "$c1" "$c2"
src1=() src2=()
for h in $(seq 1 20) $(seq 129 148); do
  ip -n "$c1" addr add "10.1.1.$h/32" dev eth0; src1+=("10.1.1.$h")
  ip -n "$c2" addr add "10.2.2.$h/32" dev eth0; src2+=("10.2.2.$h")
done
ip -n "$r" route add 10.1.1.0/24 via 10.200.1.5
ip -n "$r" route add 10.2.2.0/24 via 10.200.2.5
# Hash on addresses only (policy 0), so that all of a client's connections
# reach one node. A node's replies come back from the virtual prefix on its
# own link, which the reverse-path filter would drop as soon as the group
# no longer names that link (a draining node).
in_ns "$r" sysctl -qw net.ipv4.fib_multipath_hash_policy=0 net.ipv4.conf.all.rp_filter=0 \
  net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.v1.rp_filter=0 net.ipv4.conf.v2.rp_filter=0
for i in 1 2 3; do
  n="${nodes[i]}"
  ip netns add "$n"; ip -n "$n" link set lo up
  ip -n "$r" link add "n$i" type veth peer name eth0 netns "$n"
  ip -n "$r" addr add "10.210.$i.1/24" dev "n$i"; ip -n "$r" link set "n$i" up
  ip -n "$n" addr add "10.210.$i.2/24" dev eth0; ip -n "$n" link set eth0 up
  ip -n "$r" nexthop add id "$i" via "10.210.$i.2" dev "n$i"
  ip -n "$n" route add default via "10.210.$i.1"
  in_ns "$n" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
done
# The router remembers which node each connection first went to, so that a
# draining node's connections can be pinned to it (nodes_route.sh withdraw).
in_ns "$r" nft -f - <<'NFT'
table ip vpmnodes {
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    meta mark set ct mark
  }
  chain post {
    type filter hook postrouting priority mangle; policy accept;
    ct state new oifname "n1" ct mark set 1
    ct state new oifname "n2" ct mark set 2
    ct state new oifname "n3" ct mark set 3
  }
}
NFT

# frr_start NS NAME BGPD_CONF: zebra and bgpd in NS, their files in $work/frr/NAME
frr_start() {
  local d="$work/frr/$2"
  mkdir -p "$d"; chmod 777 "$d"
  : >"$d/zebra.conf"
  cat >"$d/bgpd.conf"
  for daemon in zebra bgpd; do
    in_ns "$1" "/usr/lib/frr/$daemon" -d -P 0 -f "$d/$daemon.conf" -i "$d/$daemon.pid" \
      -z "$d/zserv.api" --vty_socket "$d" --log "file:$d/$daemon.log" 2>>"$d/$daemon.stderr"
  done
}
if [ "$mode" = frr ]; then
  for i in 1 2 3; do
    ip -n "$r" route add 10.99.0.0/24 via "10.210.$i.2" table $((100 + i))
    ip -n "$r" rule add fwmark "$i" table $((100 + i)) pref 100
  done
  frr_start "$r" router <<'BGP'
frr defaults datacenter
router bgp 65000
 bgp router-id 10.210.0.1
 no bgp ebgp-requires-policy
 neighbor nodes peer-group
 neighbor nodes remote-as 65001
 neighbor nodes timers 1 3
 neighbor nodes timers connect 1
 neighbor 10.210.1.2 peer-group nodes
 neighbor 10.210.2.2 peer-group nodes
 neighbor 10.210.3.2 peer-group nodes
 address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
BGP
  for i in 1 2 3; do
    frr_start "${nodes[i]}" "node$i" <<BGP
frr defaults datacenter
router bgp 65001
 bgp router-id 10.210.$i.2
 no bgp ebgp-requires-policy
 neighbor 10.210.$i.1 remote-as 65000
 neighbor 10.210.$i.1 timers 1 3
 neighbor 10.210.$i.1 timers connect 1
BGP
  done
  # The vty socket of the node's own bgpd: \$VPMTUN_NAME is expanded by the hook's shell.
  announce="SETTLE_SECONDS=1 $examples/frr-announce 65001 --vty_socket $work/frr/\$VPMTUN_NAME"
  hooks=("$announce" "$announce" "$announce")
else
  route="$here/nodes_route.sh $r $work/state"
  hooks=("$route join" "$route withdraw" "$route stopped")
fi
if [ "$mode" = frr ]; then
  head -c 48 /dev/urandom | base64 >"$work/key"
  chmod 600 "$work/key"
  allocation=per-app extra="[cooperative]
key_file = \"$work/key\"
[[app]]
name = \"coop\"
aid = 104
listen = [\"10.99.0.10:9000\"]
clients = [\"10.200.0.0/16\"]
serve = \"http-info\"
cooperative = true"
else
  allocation=per-connection extra=""
fi

cat >"$work/nodes.toml" <<TOML
[vpm]
control_socket = "$work/run/vpmtun.sock"
allocation = "$allocation"
[tun]
name = "vpm0"
address = "10.99.0.1/24"
[daemon]
on_ready = "${hooks[0]}"
on_drain = "${hooks[1]}"
on_stop = "${hooks[2]}"
hook_timeout = "5s"
[[app]]
name = "red"
aid = 101
listen = ["10.99.0.10:80"]
clients = ["10.1.1.0/25", "10.2.2.0/25"]
serve = "http-info"
[[app]]
name = "blue"
aid = 102
listen = ["10.99.0.10:80"]
clients = ["10.1.1.128/25", "10.2.2.128/25"]
serve = "http-info"
[[app]]
name = "stream"
aid = 103
listen = ["10.99.0.10:7000"]
clients = ["0.0.0.0/0"]
serve = "echo"
$extra
TOML

# A node's own namespaces: network, host name, and a mount of $work/run.
# Each program in the chain execs the next, so $! is the daemon.
node_shell() {  # node_shell I COMMAND: COMMAND in a fresh such set for node I
  ip netns exec "${nodes[$1]}" unshare --uts --mount sh -c \
    "hostname node$1 && mount -t tmpfs tmpfs '$work/run' && exec $2"
}
start_node() {  # start_node I: returns once its on_ready hook is done
  local log="$work/node$1.log" before
  before=$(grep -c "on_ready: done" "$log" 2>/dev/null || true)
  ip netns exec "${nodes[$1]}" unshare --uts --mount sh -c \
    "hostname node$1 && mount -t tmpfs tmpfs '$work/run' &&
     exec '$vpmtun' run -c '$work/nodes.toml' --drain 20000" 2>>"$work/node$1.log" &
  pid[$1]=$!
  for _ in $(seq 100); do
    [ "$(grep -c "on_ready: done" "$log" || true)" -gt "${before:-0}" ] && return
    sleep 0.1
  done
  echo "node$1 did not come up:"; cat "$work/node$1.log"; exit 1
}
stats_of() {  # stats_of I: the node's `vpmtun stats --json`
  nsenter -t "${pid[$1]}" -m -u -n "$vpmtun" stats --json -c "$work/nodes.toml"
}
members() {  # the nodes the router's route to the prefix goes to: "1/2/3"
  ip -n "$r" route show 10.99.0.0/24 | grep -o 'via 10\.210\.[0-9]' | cut -c12 | sort | paste -sd/
}
wait_members() {  # wait_members WANT: until the route goes to WANT (at most 10 s)
  for _ in $(seq 100); do [ "$(members)" = "$1" ] && return; sleep 0.1; done
  return 1
}
ask() {  # ask NAME COUNT: COUNT requests from every source, into $work/NAME
  in_ns "$c1" "$py" "$here/nodes_client.py" ask 10.99.0.10 80 "$2" "${src1[@]}" >"$work/$1.c1" &
  local a=$!
  in_ns "$c2" "$py" "$here/nodes_client.py" ask 10.99.0.10 80 "$2" "${src2[@]}" >"$work/$1.c2" &
  local b=$!
  wait "$a"; wait "$b"
  "$py" "$here/nodes_client.py" summary "$work/$1.c1" "$work/$1.c2" >"$work/$1.json"
}
field() {  # field NAME EXPR: EXPR of the summary s of ask or hold NAME
  "$py" -c "import json,sys; s=json.load(open('$work/$1.json')); print($2)"
}
# Echo connections held from 5 sources of each half of each client: 20,
# few enough that most of the group's 64 buckets stay idle.
held1=("${src1[@]:0:5}" "${src1[@]:20:5}") held2=("${src2[@]:0:5}" "${src2[@]:20:5}")
hold_start() {  # hold_start NAME: returns once all are connected
  in_ns "$c1" "$py" "$here/nodes_client.py" hold 10.99.0.10 7000 "$work/$1.up1" "$work/$1.stop" \
    "${held1[@]}" >"$work/$1.c1" &
  holders+=($!)
  in_ns "$c2" "$py" "$here/nodes_client.py" hold 10.99.0.10 7000 "$work/$1.up2" "$work/$1.stop" \
    "${held2[@]}" >"$work/$1.c2" &
  holders+=($!)
  for _ in $(seq 100); do [ -s "$work/$1.up1" ] && [ -s "$work/$1.up2" ] && break; sleep 0.1; done
  [ "$(( $(cat "$work/$1.up1" 2>/dev/null || echo 0) + $(cat "$work/$1.up2" 2>/dev/null || echo 0) ))" = 20 ] || {
    echo "hold $1: not all 20 connected"; exit 1; }
}
hold_stop() {  # hold_stop NAME: closes them and summarises
  touch "$work/$1.stop"
  for p in "${holders[@]}"; do wait "$p" || true; done
  holders=()
  "$py" "$here/nodes_client.py" summary "$work/$1.c1" "$work/$1.c2" >"$work/$1.json"
}
on_node() {  # on_node NODE SUMMARY: the held sources that summary SUMMARY puts on NODE
  "$py" -c "import json; m=json.load(open('$work/$2.json'))['node_of']
print(' '.join(sorted(s for s in '${held1[*]} ${held2[*]}'.split() if m.get(s) == '$1')))"
}

# --- three nodes, one file ---------------------------------------------------
for i in 1 2 3; do start_node "$i"; done
check "the three nodes joined the routes on_ready" wait_members 1/2/3
for i in 1 2 3; do node_shell "$i" "'$vpmtun' check -c '$work/nodes.toml'" >"$work/check$i"; done
check "vpmtun check gives the same hidden ports on every node" \
  bash -c "diff <(grep -v '^  node ' '$work/check1') <(grep -v '^  node ' '$work/check2') &&
           diff <(grep -v '^  node ' '$work/check1') <(grep -v '^  node ' '$work/check3') &&
           grep -q '^  node node2, hooks: on_ready on_drain on_stop' '$work/check2'"

ask spread 3
echo "spread: $(field spread "s['per_node']")"
check "240 requests from 80 addresses all answered" test "$(field spread "len(s['failed'])")" = 0
check "each by the app its rules name" test "$(field spread "len(s['wrong_app'])")" = 0
check "each address stayed on one node" test "$(field spread "len(s['split'])")" = 0
check "all three nodes served" test "$(field spread "len(s['per_node'])")" = 3
stats_agree() {
  for i in 1 2 3; do
    local accepted answered
    accepted=$(stats_of "$i" | "$py" -c "import json,sys; print(json.load(sys.stdin)['stack']['tcp_accepted'])")
    answered=$(field spread "s['per_node'].get('node$i', 0)")
    echo "  node$i: $answered answered, stats tcp_accepted $accepted"
    [ "$accepted" = "$answered" ] || return 1
  done
}
check "each node's stats count what it answered" stats_agree

if [ "$mode" = frr ]; then
  # A client VPM (no TUN) in each client namespace; python's urllib under
  # vpmtun exec, 5 GETs each: negotiated on p1 by whichever node the
  # client's address hashes to, and the data on p2 must reach the same one.
  for c in 1 2; do
    cat >"$work/client$c.toml" <<TOML
[vpm]
control_socket = "$work/client$c.sock"
app_socket = "$work/client$c-app.sock"
[cooperative]
key_file = "$work/key"
[[app]]
name = "coop"
aid = 104
remote = ["10.99.0.10:9000"]
TOML
    ns=$c1; [ "$c" = 2 ] && ns=$c2
    ip netns exec "$ns" "$vpmtun" run -c "$work/client$c.toml" 2>>"$work/client$c.log" &
    holders+=($!)
    for _ in $(seq 50); do [ -S "$work/client$c-app.sock" ] && break; sleep 0.1; done
    for _ in 1 2 3 4 5; do
      timeout 20 ip netns exec "$ns" "$vpmtun" exec --app coop -s "$work/client$c-app.sock" -- \
        "$py" "$here/http_get.py" http://10.99.0.10:9000/ >>"$work/coop$c" 2>>"$work/client$c.log" || true
    done
  done
  coop_ok() {
    for c in 1 2; do
      local n nodes
      n=$(grep -c '"app":"coop"' "$work/coop$c" || true)
      nodes=$(grep -o '"node":"[a-z0-9]*"' "$work/coop$c" | sort -u | paste -sd' ')
      echo "  client $c: $n of 5 answered, by $nodes"
      [ "$n" = 5 ] || return 1
    done
  }
  check "cooperative connections from both clients answered (negotiation and data on one node)" coop_ok
  for p in "${holders[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  holders=()
fi

# --- drain node2 -------------------------------------------------------------
hold_start drain
on2=$(on_node node2 spread)
echo "held connections on node2: $(wc -w <<<"$on2")"
kill -TERM "${pid[2]}"
for _ in $(seq 100); do grep -q "draining .* connections" "$work/node2.log" && break; sleep 0.1; done
check "node2 left the routes (on_drain) before its listeners closed" bash -c \
  "test '$(members)' = 1/3 &&
   grep -n 'on_drain: done\|draining .* connections' '$work/node2.log' | head -2 | tr '\n' ' ' |
     grep -q 'on_drain: done.*draining'"
ask during 2
echo "during the drain: $(field during "s['per_node']")"
check "new connections all answered during the drain" test "$(field during "len(s['failed'])")" = 0
check "none by node2" test "$(field during "s['per_node'].get('node2', 0)")" = 0
check "node2 still serves its open connections" kill -0 "${pid[2]}"
hold_stop drain
check "no held connection broke: node2's finished ($(wc -w <<<"$on2")), the others' too" \
  test "$(field drain "len(s['failed'])")" = 0
code=0
wait "${pid[2]}" || code=$?
check "node2 stopped by itself once its connections ended (exit 0)" test "$code" = 0
check "its hooks ran in order: on_ready, on_drain, on_stop" \
  bash -c "grep -o 'on_[a-z]*: done' '$work/node2.log' | paste -sd' ' |
           grep -qx 'on_ready: done on_drain: done on_stop: done'"

# --- node2 back ----------------------------------------------------------------
hold_start back
start_node 2
check "node2 joined again" wait_members 1/2/3
# The resilient group gives node2 buckets idle for idle_timer (8 s).
if [ "$mode" = kernel ]; then sleep 12; fi
ask after 1
echo "after node2 came back: $(field after "s['per_node']")"
check "new clients reach node2 again" test "$(field after "s['per_node'].get('node2', 0)")" -gt 0
check "requests all answered" test "$(field after "len(s['failed'])")" = 0
hold_stop back
check "no connection held on node1 or node3 moved or broke" test "$(field back "len(s['failed'])")" = 0

# --- kill node3 ----------------------------------------------------------------
hold_start kill
on3=$(on_node node3 after)
# A crash takes the daemon and its workers at once (workers whose
# supervisor dies would drain).
kill -9 $(pgrep -P "${pid[3]}" -x vpmtun) "${pid[3]}" 2>/dev/null || true
wait "${pid[3]}" 2>/dev/null || true
if [ "$mode" = kernel ]; then
  sleep 1  # the routing daemon's hold timer
  VPMTUN_NAME=node3 VPMTUN_PREFIXES=10.99.0.0/24 "$here/nodes_route.sh" "$r" "$work/state" down
fi
check "the router dropped node3" wait_members 1/2
sleep 5
hold_stop kill
lost=$(field kill "' '.join(sorted(s['failed']))")
echo "held connections on node3: $(wc -w <<<"$on3"); broken: $(wc -w <<<"$lost")"
check "exactly node3's own connections broke" test "$lost" = "$on3"
check "node3 had some (the check above is not empty)" test -n "$on3"

kill -TERM "${pid[1]}" "${pid[2]}"
for i in 1 2; do wait "${pid[$i]}" || true; done
pid=("" "" "" "")
echo "nodes ($mode): $fail failed"
[ "$fail" -eq 0 ]
