#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
stop_etcd
rm -rf "$STATE"
echo "etcd data removed on $BERTH_HOST"
