#!/bin/sh
# Nodes run no member: they check the cluster through a real client against master0.
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
"$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" endpoint health
"$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" put "nodes/$BERTH_HOST" "$IP"
echo "node $BERTH_HOST registered with the etcd cluster"
