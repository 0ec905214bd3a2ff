#!/usr/bin/env bash
# The routing layer of tests/netns/nodes.sh, run as a node's vpmtun hook:
# what a routing daemon would do with the node's announcements, done
# directly on the router's namespace.
#
#   nodes_route.sh ROUTER STATE_DIR join|withdraw|down|stopped
#
# The node is $VPMTUN_NAME (nodeN: nexthop N, via 10.210.N.2); the prefix
# $VPMTUN_PREFIXES. The route to the prefix is nexthop group 100, type
# resilient, over the nodes that joined. `withdraw` (on_drain) first pins
# the node's established connections to it (the router marks each
# connection with the node it first went to; rule fwmark N -> table 100+N),
# then takes the node out of the group, so only new connections move.
# `down` takes it out without pinning (a dead node), `stopped` drops the pin.
# Every call is appended to STATE_DIR/log as "NAME ACTION VPMTUN_STATE".
set -euo pipefail
router="$1" state="$2" action="$3"
node="${VPMTUN_NAME:?}" prefix="${VPMTUN_PREFIXES%% *}"
n="${node#node}"
exec 9>"$state/lock"
flock 9
echo "$node $action ${VPMTUN_STATE:-}" >>"$state/log"
mkdir -p "$state/members"
r() { ip -n "$router" "$@"; }

regroup() {
  local group
  group=$(ls "$state/members" | sort -n | paste -sd/)
  if [ -z "$group" ]; then
    r route del "$prefix" 2>/dev/null || true
    r nexthop del id 100 2>/dev/null || true
    return
  fi
  local verb=add
  r nexthop show id 100 >/dev/null 2>&1 && verb=replace
  r nexthop "$verb" id 100 group "$group" type resilient buckets 64 idle_timer 8 unbalanced_timer 0
  r route replace "$prefix" nhid 100
}

case "$action" in
  join)
    r rule del fwmark "$n" table $((100 + n)) 2>/dev/null || true
    touch "$state/members/$n"
    regroup ;;
  withdraw)
    r route replace "$prefix" via "10.210.$n.2" table $((100 + n))
    r rule add fwmark "$n" table $((100 + n)) pref 100
    rm -f "$state/members/$n"
    regroup ;;
  down)
    rm -f "$state/members/$n"
    regroup ;;
  stopped)
    r rule del fwmark "$n" table $((100 + n)) 2>/dev/null || true ;;
  *) echo "nodes_route.sh: unknown action $action" >&2; exit 2 ;;
esac
