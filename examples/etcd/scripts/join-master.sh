#!/bin/sh
# Other masters, one at a time: add this member to the running cluster, then start it.
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
if running; then echo "already a member"; exit 0; fi
if ! "$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" member list | grep -q "$PEER"; then
  # etcd refuses a reconfiguration until the members it has are stable ("unhealthy
  # cluster" right after the previous join): retry for a while.
  i=0
  until out=$("$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" member add "$BERTH_HOST" --peer-urls "$PEER" 2>&1); do
    case "$out" in
      *"unhealthy cluster"*|*"not enough started members"*) ;;
      *) echo "$out" >&2; exit 1 ;;
    esac
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then echo "$out" >&2; exit 1; fi
    echo "etcd is not ready for a new member yet; retrying ($i)"
    sleep 1
  done
  echo "$out" >"$STATE/member-add.env"
fi
cluster=$("$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" member list | awk -F', ' '{ if ($3 != "") printf "%s%s=%s", sep, $3, $4; else printf "%s%s=%s", sep, NAME, $4; sep="," }' NAME="$BERTH_HOST")
start_etcd "$cluster" existing
