#!/usr/bin/env bash
# cmake --install puts the command, the systemd unit and the example
# configurations where they belong, and every example is a valid config.
#   tests/install.sh BUILD_DIR
set -euo pipefail
build="$1"
dest="$(mktemp -d)"
trap 'rm -rf "$dest"' EXIT
cmake --install "$build" --prefix "$dest" >/dev/null
fail=0
expect() { if [ -e "$dest/$1" ]; then echo "ok   $1"; else echo "FAIL $1 not installed"; fail=1; fi; }
expect bin/vpmtun
expect lib/systemd/system/vpmtun.service
for f in two-instances forward ipv6 exec cooperative-server cooperative-client nodes; do
  expect "share/vpmtun/examples/$f.toml"
  if "$dest/bin/vpmtun" check -c "$dest/share/vpmtun/examples/$f.toml" >/dev/null; then
    echo "ok   example $f.toml passes vpmtun check"
  else
    echo "FAIL example $f.toml"; fail=1
  fi
done
# Several nodes: the hook is executable, and FRR (when installed) takes the
# node's configuration without a complaint (bgpd -C exits 0 either way).
if [ -x "$dest/share/vpmtun/examples/frr-announce" ]; then
  echo "ok   share/vpmtun/examples/frr-announce is executable"
else
  echo "FAIL share/vpmtun/examples/frr-announce"; fail=1
fi
if [ -x /usr/lib/frr/bgpd ]; then
  frr="$(mktemp -d)"  # bgpd reads as user frr
  cp "$dest/share/vpmtun/examples/frr-node.conf" "$frr/"
  chmod 755 "$frr"; chmod 644 "$frr/frr-node.conf"
  said=$(/usr/lib/frr/bgpd -C -f "$frr/frr-node.conf" -i "$frr/pid" \
    -z "$frr/zserv" --vty_socket "$frr" 2>&1 || echo "bgpd failed")
  rm -rf "$frr"
  if [ -z "$said" ]; then echo "ok   FRR's bgpd takes frr-node.conf"; else echo "FAIL frr-node.conf: $said"; fail=1; fi
fi
# vpmtun exec finds the installed application library by itself: then it
# only misses the daemon.
expect "$(cd "$dest" && ls lib*/vpmtun/libvpmtun-app.so lib/*/vpmtun/libvpmtun-app.so 2>/dev/null | head -1)"
# The metrics module: forward.toml has [metrics] listen, and vpmtun check
# above loaded the module for it.
expect "$(cd "$dest" && ls lib*/vpmtun/vpmtun-metrics.so lib/*/vpmtun/vpmtun-metrics.so 2>/dev/null | head -1)"
out=$("$dest/bin/vpmtun" exec --app x -s "$dest/no.sock" -- true 2>&1 || true)
if grep -q "no vpmtun daemon" <<<"$out"; then
  echo "ok   the installed vpmtun exec finds its library"
else
  echo "FAIL the installed vpmtun exec: $out"; fail=1
fi
unit="$dest/lib/systemd/system/vpmtun.service"
if grep -q '^Type=notify$' "$unit" && grep -qE '^ExecStart=/.*/bin/vpmtun run -c ' "$unit"; then
  echo "ok   the unit starts vpmtun run, Type=notify"
else
  echo "FAIL the unit's ExecStart or Type"; fail=1
fi
if "$dest/bin/vpmtun" --version | grep -qE '^[0-9]+\.[0-9]+\.[0-9]+$'; then
  echo "ok   vpmtun --version"
else
  echo "FAIL vpmtun --version"; fail=1
fi
exit "$fail"
