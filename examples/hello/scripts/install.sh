#!/bin/sh
set -eu
. "$BERTH_ROOTFS/scripts/lib.sh"
maybe_fail install
i=0
while [ "$i" -lt "${HELLO_INSTALL_SECONDS:-0}" ]; do
  echo "installing... $i"
  sleep 1
  i=$((i + 1))
done
echo "installed on $BERTH_HOST: $(cat "$BERTH_ROOTFS/etc/hello.conf")"
mark install
