#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
maybe_fail clean
echo "cleaning $BERTH_CLUSTER on $BERTH_HOST"
mark clean
