#!/bin/sh
# master0: start the first member, record the endpoint others join through.
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
start_etcd "$BERTH_HOST=$PEER" new
echo "ETCD_ENDPOINTS=$CLIENT" >>"$BERTH_OUTPUTS"
