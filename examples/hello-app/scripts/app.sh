#!/bin/sh
# Runs on master0 only, after the cluster is up.
set -eu
MARKS=${HELLO_MARKS:-$BERTH_ROOTFS/../marks}
mkdir -p "$MARKS"
echo "app $(date +%s)" >> "$MARKS/$BERTH_HOST.log"
echo "hello-app deployed from $BERTH_HOST (masters: $BERTH_MASTERS, nodes: ${BERTH_NODES:-none})"
