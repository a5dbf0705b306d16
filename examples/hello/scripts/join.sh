#!/bin/sh
# join-master and join-node: refuse to join without master0's secret.
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
maybe_fail join
if [ -z "${JOIN_TOKEN:-}" ]; then
  echo "no JOIN_TOKEN: init has not run or its outputs did not arrive" >&2
  exit 1
fi
echo "$BERTH_HOST joined $BERTH_MASTER0 ($BERTH_MASTER0_IP) as $BERTH_ROLES with token $JOIN_TOKEN"
mark "join $JOIN_TOKEN"
