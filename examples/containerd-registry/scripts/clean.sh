#!/bin/sh
# Removes only what install.sh wrote (directories holding its CA copy).
set -eu
for name in "${BERTH_REGISTRY:-}" $MIRROR_OF; do
  dir="$CONTAINERD_CERTS_DIR/$name"
  if [ -n "$name" ] && [ -f "$dir/berth-ca.crt" ]; then
    rm -f "$dir/hosts.toml" "$dir/berth-ca.crt"
    rmdir "$dir" 2>/dev/null || true
  fi
done
