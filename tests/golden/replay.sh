#!/usr/bin/env bash
# Golden replay test: every bundled capture through `vpmtun replay`, forward
# and back, compared byte for byte with pcaps/expected/, checked by an
# independent reading of the config (pcaps/verify.py) and by tshark's
# checksum validation.
#
# usage: tests/golden/replay.sh VPMTUN [--update]     (--update rewrites pcaps/expected/)
set -euo pipefail
vpmtun="$(realpath "$1")"
update="${2:-}"
cd "$(dirname "$0")/../../pcaps"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
fail=0
checks=0

bad_checksums() {  # prints the number of packets tshark finds a bad checksum in
  tshark -r "$1" -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE -o ip.check_checksum:TRUE \
    -Y 'tcp.checksum.status == 0 || udp.checksum.status == 0 || icmp.checksum.status == 0 || icmpv6.checksum.status == 0 || ip.checksum.status == 0' \
    2>/dev/null | wc -l
}

check() {  # check DESCRIPTION COMMAND...
  checks=$((checks + 1))
  if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fail=$((fail + 1)); fi
}

# name of capture, config
cases=(
  "tcp-http demo" "tcp-http-raw demo" "udp demo" "frag demo" "icmp demo"
  "tcp-http per-connection" "udp per-connection" "icmp per-connection"
)
mkdir -p expected
for c in "${cases[@]}"; do
  read -r name cfg <<<"$c"
  id="$name.$cfg"
  out="$tmp/$id.stack.pcap" back="$tmp/$id.back.pcap"
  "$vpmtun" replay "$name.pcap" -c "$cfg.toml" -o "$out" 2>"$tmp/$id.warnings" | tail -n +2 >"$tmp/$id.summary"
  if [ "$update" = "--update" ]; then
    cp "$out" "expected/$id.stack.pcap"
    cp "$tmp/$id.summary" "expected/$id.summary.txt"
  fi
  check "$id: output equals expected/$id.stack.pcap" cmp -s "$out" "expected/$id.stack.pcap"
  check "$id: summary equals expected/$id.summary.txt" diff -u "expected/$id.summary.txt" "$tmp/$id.summary"
  check "$id: independent check of ports and drops" $py verify.py "$cfg.toml" "$name.pcap" "$out"
  check "$id: tshark finds no bad checksum" test "$(bad_checksums "$out")" -eq 0
  "$vpmtun" replay "$out" -c "$cfg.toml" -o "$back" --reverse -q
  drops=$(awk '$1 == "dropped" || $1 == "refused" { n += $2 } END { print n + 0 }' "$tmp/$id.summary")
  check "$id: --reverse gives the input back (less $drops dropped)" $py verify.py --subsequence "$name.pcap" "$back" "$drops"
  if [ "$drops" -eq 0 ]; then
    check "$id: round trip is byte-identical as a file" cmp -s "$name.pcap" "$back"
  fi
done

# pcapng input goes through libpcap and comes out as (nanosecond) pcap with the same packets.
editcap -F pcapng tcp-http.pcap "$tmp/tcp-http.pcapng"
"$vpmtun" replay "$tmp/tcp-http.pcapng" -c demo.toml -o "$tmp/ng.stack.pcap" -q
same_packets() { diff <(tcpdump -nn -xx -r "$1" 2>/dev/null) <(tcpdump -nn -xx -r "$2" 2>/dev/null) >/dev/null; }
check "pcapng input: same packets out as from the pcap" same_packets "$tmp/ng.stack.pcap" expected/tcp-http.demo.stack.pcap

# "-" is standard input and output: the same bytes as through files, the
# summary on standard error; pcapng through a pipe too; and a record fed into
# a pipe comes out before the input ends (a live capture flows through).
piped() { "$vpmtun" replay - -c demo.toml -o - 2>"$tmp/piped.err" <"$1"; }
piped tcp-http.pcap >"$tmp/piped.pcap" || true
check "pipe in, pipe out: output equals expected/tcp-http.demo.stack.pcap" \
  cmp -s "$tmp/piped.pcap" expected/tcp-http.demo.stack.pcap
check "pipe out: the summary goes to standard error" grep -q "^standard input -> standard output" "$tmp/piped.err"
check "pcapng through a pipe: same packets out as from the pcap" \
  same_packets <(piped "$tmp/tcp-http.pcapng") expected/tcp-http.demo.stack.pcap
check "--print with -o - is refused" \
  bash -c '! "$1" replay udp.pcap -c demo.toml -o - -p >/dev/null 2>&1' _ "$vpmtun"
live_record() {  # the header and one record, and the pipe kept open: the record must come out
  $py - "$vpmtun" <<'PY'
import select, struct, subprocess, sys
data = open("udp.pcap", "rb").read()
first = 24 + 16 + struct.unpack("<I", data[32:36])[0]
p = subprocess.Popen([sys.argv[1], "replay", "-", "-c", "demo.toml", "-o", "-", "-q"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
p.stdin.write(data[:first]); p.stdin.flush()
ready = select.select([p.stdout], [], [], 5)[0]
p.stdin.write(data[first:]); p.stdin.close()
out = p.stdout.read()
sys.exit(0 if ready and p.wait() == 0 and len(out) == len(data) else 1)
PY
}
check "a record written into a pipe comes out before the pipe ends" live_record

# A capture replay turns down (here link type 147, USER0) leaves an existing output as it was.
{ head -c 20 udp.pcap; printf '\x93\x00\x00\x00'; tail -c +25 udp.pcap; } >"$tmp/user0.pcap"
echo "keep me" >"$tmp/kept.out"
turned_down() {
  ! "$vpmtun" replay "$tmp/user0.pcap" -c demo.toml -o "$tmp/kept.out" -q 2>/dev/null &&
    [ "$(cat "$tmp/kept.out")" = "keep me" ]
}
check "an unsupported link type leaves the output file untouched" turned_down

# A capture cut short is reported with the record that is cut, not silently shortened.
head -c 5000 tcp-http.pcap >"$tmp/cut.pcap"
cut_error() {
  local out
  if out=$("$vpmtun" replay "$tmp/cut.pcap" -c demo.toml -o "$tmp/cut.out" -q 2>&1); then return 1; fi
  grep -q "record 45 is cut short" <<<"$out"
}
check "a truncated capture names the record" cut_error

echo "golden replay: $((checks - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]
