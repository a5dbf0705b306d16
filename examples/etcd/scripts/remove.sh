#!/bin/sh
# master0, once per removed host: remove its member (nodes have none).
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
id=$("$ETCDCTL" --endpoints "$CLIENT" member list | awk -F', ' -v n="$BERTH_TARGET_HOST" '$3 == n {print $1}')
if [ -n "$id" ]; then
  "$ETCDCTL" --endpoints "$CLIENT" member remove "$id"
else
  "$ETCDCTL" --endpoints "$CLIENT" del "nodes/$BERTH_TARGET_HOST" >/dev/null || true
  echo "$BERTH_TARGET_HOST is not an etcd member"
fi
