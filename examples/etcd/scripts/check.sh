#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
"$ETCD" --version | head -1
[ -n "$IP" ] || { echo "this host has no address for etcd" >&2; exit 1; }
