#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
command -v sh >/dev/null
i=0
while [ "$i" -lt "${HELLO_CHECK_SECONDS:-0}" ]; do
  echo "checking... $i"
  sleep 1
  i=$((i + 1))
done
echo "check ok on $BERTH_HOST ($BERTH_ROLES)"
mark check
