#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
command -v sh >/dev/null
echo "check ok on $BERTH_HOST ($BERTH_ROLES)"
mark check
