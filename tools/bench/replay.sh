#!/usr/bin/env bash
# Replay benchmark: vpmtun replay against tcprewrite on the same capture, in
# the same run, plus the engine alone in memory. A script, not a test.
#
#   tools/bench/replay.sh [BUILD_DIR] [PACKETS]     (defaults: build-bench, 1000000)
#
# Makes a PACKETS-packet raw-IP capture (mixed TCP/UDP, IPv4/IPv6, 16-127
# byte payloads, 4000 clients of two apps), then times, 5 runs each, median:
#   tcprewrite --portmap=9000:20000 --fixcsum   (rewrites a port, fixes checksums)
#   vpmtun replay -c pcaps/demo.toml            (classifies, allocates, tracks, rewrites)
# Output files are removed before every run so neither pays for truncation.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-bench}"
packets="${2:-1000000}"
runs=5

if [ ! -x "$build/tools/vpmtun" ] || [ ! -x "$build/tools/bench/vpmtun-bench" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVPMTUN_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target vpmtun vpmtun-bench >/dev/null
fi
command -v tcprewrite >/dev/null || { echo "replay.sh: tcprewrite missing (tools/install-deps)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$build/tools/bench/vpmtun-bench" gen "$work/in.pcap" "$packets"
size_mb=$(( $(stat -c %s "$work/in.pcap") / 1000000 ))
echo "capture: $packets packets, $size_mb MB ($(nproc) cores, $(date -u +%FT%TZ))"

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
time_runs() {  # time_runs CMD... ; prints the median seconds (to the microsecond: time(1) gives 10 ms)
  for _ in $(seq "$runs"); do
    rm -f "$work/out.pcap"
    sync "$work" 2>/dev/null || true
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.6f\n", ns / 1e9 }'
  done | median
}
tr=$(time_runs tcprewrite --portmap=9000:20000 --fixcsum -i "$work/in.pcap" -o "$work/out.pcap")
vr=$(time_runs "$build/tools/vpmtun" replay "$work/in.pcap" -c "$root/pcaps/demo.toml" -o "$work/out.pcap" -q)
awk -v tr="$tr" -v vr="$vr" -v n="$packets" 'BEGIN {
  printf "tcprewrite      median %6.3f s  %6.2f Mpps\n", tr, n / tr / 1e6
  printf "vpmtun replay   median %6.3f s  %6.2f Mpps\n", vr, n / vr / 1e6
  printf "ratio: vpmtun replay is %.2fx tcprewrite\n", tr / vr
}'
echo "engine alone, in memory, one core:"
"$build/tools/bench/vpmtun-bench" engine "$work/in.pcap" -c "$root/pcaps/demo.toml" | sed 's/^/  /'
