# Shared by the daemon's namespace tests; source it after `set -euo pipefail`.

# skip_unless_netns TEST: exit 77 (ctest: skipped) unless this runs as root
# with /dev/net/tun and network namespaces.
skip_unless_netns() {
  if [ "$(id -u)" -ne 0 ] || [ ! -c /dev/net/tun ] || ! ip netns add "vpmprobe$$" 2>/dev/null; then
    echo "$1: SKIPPED (needs root, /dev/net/tun and network namespaces)"
    exit 77
  fi
  ip netns del "vpmprobe$$"
}

in_ns() { local n="$1"; shift; ip netns exec "$n" "$@"; }

fail=0
check() {  # check DESCRIPTION COMMAND...: prints ok or FAIL and the seconds it took
  local t0=$SECONDS
  if "${@:2}"; then echo "ok   $1 ($((SECONDS - t0)) s)"; else echo "FAIL $1 ($((SECONDS - t0)) s)"; fail=$((fail + 1)); fi
}

# router_with_clients D C1 [C2...]: namespace D routes between the clients
# and its TUN; client i (1-based) is 10.200.i.5/24 and fd00:200:i::5/64 on
# its eth0, behind D's vi (10.200.i.1, fd00:200:i::1). Every namespace is new.
router_with_clients() {
  local d="$1" i=0 c
  shift
  ip netns add "$d"; ip -n "$d" link set lo up
  for c in "$@"; do
    i=$((i + 1))
    ip netns add "$c"; ip -n "$c" link set lo up
    ip -n "$d" link add "v$i" type veth peer name eth0 netns "$c"
    ip -n "$d" addr add "10.200.$i.1/24" dev "v$i"; ip -n "$d" addr add "fd00:200:$i::1/64" dev "v$i" nodad
    ip -n "$d" link set "v$i" up
    ip -n "$c" addr add "10.200.$i.5/24" dev eth0; ip -n "$c" addr add "fd00:200:$i::5/64" dev eth0 nodad
    ip -n "$c" link set eth0 up
    ip -n "$c" route add default via "10.200.$i.1"; ip -n "$c" -6 route add default via "fd00:200:$i::1"
  done
  in_ns "$d" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
}

# start_vpmtun NS LOG CONFIG [run options...]: the daemon in NS, its stderr
# in LOG; sets daemon_pid and returns once its IPv4 TUN route is in.
start_vpmtun() {
  local n="$1" log="$2"
  shift 2
  ip netns exec "$n" "$vpmtun" run -c "$@" 2>>"$log" &
  daemon_pid=$!
  for _ in $(seq 100); do ip -n "$n" route | grep -q ' dev vpm0 ' && return; sleep 0.1; done
  echo "daemon: did not come up"; cat "$log"; exit 1
}
