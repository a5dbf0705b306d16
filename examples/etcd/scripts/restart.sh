#!/bin/sh
# upgrade and rollback: restart this host's member from the rootfs generation the host moves
# to ($BERTH_TO_ROOTFS), keeping its data. berth upgrades masters one at a time, so the
# other members keep quorum while this one restarts; the next host goes only once the whole
# cluster is healthy again. Nodes run no member: they check the cluster.
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
ETCD=$BERTH_TO_ROOTFS/bin/etcd
echo "etcd $BERTH_FROM_VERSION -> $BERTH_TO_VERSION on $BERTH_HOST"
if [ ! -d "$DATA/member" ]; then
  "$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" endpoint health
  exit 0
fi
stop_etcd
# With a data dir, etcd takes its membership from it (the initial-cluster flags are ignored).
start_etcd "$BERTH_HOST=$PEER" existing
i=0
until "$ETCDCTL" --endpoints "$CLIENT" endpoint health --cluster >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 120 ]; then
    "$ETCDCTL" --endpoints "$CLIENT" endpoint health --cluster >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "every member is healthy again"
