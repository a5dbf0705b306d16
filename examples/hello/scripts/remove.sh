#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
echo "master0 $BERTH_HOST removes $BERTH_TARGET_HOST ($BERTH_TARGET_IP)"
mark "remove $BERTH_TARGET_HOST"
