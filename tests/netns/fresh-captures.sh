#!/usr/bin/env bash
# End to end with real clients: makes fresh captures (curl, socat, nc, ping in
# network namespaces this test creates and deletes; see
# pcaps/make-captures.sh for the topology), replays each through vpmtun
# forward and back, and checks the result independently (pcaps/verify.py),
# with tshark's checksum validation, and for the byte-identical round trip.
#
# Needs root for the namespaces: without it, exits 77 (ctest: skipped).
set -euo pipefail
vpmtun="$(realpath "$1")"
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ "$(id -u)" -ne 0 ] || ! ip netns add "vpmprobe$$" 2>/dev/null; then
  echo "fresh-captures: SKIPPED (needs root and network namespaces)"
  exit 77
fi
ip netns del "vpmprobe$$"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/pcaps/make-captures.sh" "$work" >/dev/null 2>&1
fail=0
for f in tcp-http tcp-http-raw udp frag icmp; do
  for cfg in demo per-connection; do
    out="$work/$f.$cfg.stack.pcap" back="$work/$f.$cfg.back.pcap"
    "$vpmtun" replay "$work/$f.pcap" -c "$root/pcaps/$cfg.toml" -o "$out" >"$work/summary" 2>/dev/null
    drops=$(awk '$1 == "dropped" || $1 == "refused" { n += $2 } END { print n + 0 }' "$work/summary")
    "$vpmtun" replay "$out" -c "$root/pcaps/$cfg.toml" -o "$back" --reverse -q
    bad=$(tshark -r "$out" -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE \
      -Y 'tcp.checksum.status == 0 || udp.checksum.status == 0 || icmp.checksum.status == 0 || icmpv6.checksum.status == 0' 2>/dev/null | wc -l)
    if /usr/bin/python3 "$root/pcaps/verify.py" "$root/pcaps/$cfg.toml" "$work/$f.pcap" "$out" >/dev/null &&
       /usr/bin/python3 "$root/pcaps/verify.py" --subsequence "$work/$f.pcap" "$back" "$drops" >/dev/null &&
       [ "$bad" -eq 0 ] && [ "$(tshark -r "$work/$f.pcap" 2>/dev/null | wc -l)" -gt 0 ]; then
      echo "ok   $f with $cfg.toml"
    else
      echo "FAIL $f with $cfg.toml (bad checksums: $bad)"
      fail=$((fail + 1))
    fi
  done
done
[ "$fail" -eq 0 ]
