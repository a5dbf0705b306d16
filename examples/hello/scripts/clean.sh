#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
echo "cleaning $BERTH_CLUSTER on $BERTH_HOST"
mark clean
