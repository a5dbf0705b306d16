#!/bin/sh
# master0 only: create a secret that joining hosts need, as a cluster output.
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
maybe_fail init
token=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "JOIN_TOKEN=$token" >> "$BERTH_OUTPUTS"
echo "MASTER0_SEEN=$BERTH_HOST" >> "$BERTH_OUTPUTS"
echo "initialized cluster $BERTH_CLUSTER on $BERTH_HOST"
mark init
