#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/common.sh"
stop_etcd
