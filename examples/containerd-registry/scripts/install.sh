#!/bin/sh
# Writes $CONTAINERD_CERTS_DIR/<registry>/hosts.toml for the controller's registry and for
# every registry in MIRROR_OF, with the controller's CA next to it.
set -eu
: "${BERTH_REGISTRY:?the agent sets BERTH_REGISTRY (the controller as a registry)}"
for name in "$BERTH_REGISTRY" $MIRROR_OF; do
  dir="$CONTAINERD_CERTS_DIR/$name"
  mkdir -p "$dir"
  cp "$BERTH_REGISTRY_CA" "$dir/berth-ca.crt"
  cat > "$dir/hosts.toml.tmp" <<TOML
# Written by the berth bundle containerd-registry.
server = "https://$name"

[host."https://$BERTH_REGISTRY"]
  capabilities = ["pull", "resolve"]
  ca = "$dir/berth-ca.crt"
TOML
  mv "$dir/hosts.toml.tmp" "$dir/hosts.toml"
  echo "containerd pulls of $name go to https://$BERTH_REGISTRY"
done
