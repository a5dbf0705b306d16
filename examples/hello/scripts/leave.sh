#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
echo "$BERTH_HOST leaves $BERTH_CLUSTER"
mark leave
