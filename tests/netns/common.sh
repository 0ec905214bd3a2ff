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
