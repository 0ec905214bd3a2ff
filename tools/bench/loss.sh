#!/usr/bin/env bash
# One TCP stream each way through HAProxy and through vpmtun's forward (one
# worker) with 0.1% and 1% of packets lost each way on the client's link,
# in both of tools/bench/e2e.sh's loss models: "router" drops packets as
# the router forwards them (a 64 KiB TSO or TUN segment is one packet
# there), "wire" drops packets of the link's MTU in a namespace between
# client and router (no TSO/GSO towards it), as a real network does. Ratios are against HAProxy, whose sending is the
# kernel's TCP (SACK, RACK, CUBIC). A script, not a test; needs root; the
# namespaces are e2e.sh's own.
#
#   tools/bench/loss.sh [BUILD_DIR] [SECONDS] [RUNS]   (defaults: build-bench, 5, 5)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for at in router wire; do
  for loss in 0.1 1; do
    LOSS=$loss LOSS_AT=$at STREAMS_ONLY=1 "$here/e2e.sh" "${1:-}" "${2:-5}" "${3:-5}"
    echo
  done
done
