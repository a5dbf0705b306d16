#!/usr/bin/env bash
# Puts Debian's etcd and etcdctl binaries into examples/etcd/bin so the bundle carries them
# and nothing is downloaded at install time. Needs apt access once (as root it runs
# apt-get update when the package lists are empty); the packages are not installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ -x $here/bin/etcd && -x $here/bin/etcdctl ]] && exit 0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download etcd-server etcd-client >/dev/null 2>&1 || { apt-get update -qq >/dev/null; apt-get download etcd-server etcd-client >/dev/null; }
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
mkdir -p "$here/bin"
cp root/usr/bin/etcd "$here/bin/etcd"
cp root/usr/bin/etcdctl "$here/bin/etcdctl"
chmod 755 "$here/bin/etcd" "$here/bin/etcdctl"
"$here/bin/etcd" --version | head -1
