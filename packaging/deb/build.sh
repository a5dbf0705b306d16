#!/usr/bin/env bash
# Builds the Debian packages berth (controller and CLI) and berth-agent as plain dpkg-deb
# trees, writes target/deb/<package>_<version>_<arch>.deb and prints their paths on stdout
# (everything else goes to stderr).
#
#   packaging/deb/build.sh                      # cargo build --release, then package
#   BERTH_BIN_DIR=DIR packaging/deb/build.sh    # package DIR/berth and DIR/berth-agent, no build
#   BERTH_DEB_ARCH=arm64 ...                    # Debian architecture (default: the binaries')
#
# The units are generated from packaging/systemd/, the one source of truth for them.
# No shell completions or man pages: neither binary can generate them (no `completions`
# subcommand yet).
set -euo pipefail
umask 022

# BERTH_BIN_DIR may be relative to the caller's directory.
bin_dir=${BERTH_BIN_DIR:+$(realpath -m "$BERTH_BIN_DIR")}
cd "$(dirname "$0")/../.."
src=packaging/deb
out=target/deb

die() {
  echo "build.sh: $*" >&2
  exit 1
}

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
[[ -n $version ]] || die "no version in [workspace.package] of Cargo.toml"
# Debian sorts a pre-release (Cargo's 1.2.0-rc.1) before its release only when spelt 1.2.0~rc.1.
deb_version=${version//-/\~}

if [[ -z $bin_dir ]]; then
  # Cargo's JSON messages name the executables wherever the build target (.cargo/config.toml)
  # and the target dir put them.
  bin_dir=$(cargo build --release -p berth-controller -p berth-agent \
    --message-format=json-render-diagnostics |
    sed -n 's|.*"executable":"\([^"]*\)/berth".*|\1|p')
fi
for bin in berth berth-agent; do
  [[ -f $bin_dir/$bin && -x $bin_dir/$bin ]] || die "no executable $bin in '$bin_dir'"
done

arch=${BERTH_DEB_ARCH:-}
if [[ -z $arch ]]; then
  # The ELF header's e_machine (2 bytes at offset 18, read as little-endian like the host's
  # od does on x86_64 and arm64): what the binaries were built for, not the build host.
  case $(od -An -t u2 -j 18 -N 2 "$bin_dir/berth" | tr -d ' ') in
  62) arch=amd64 ;;
  183) arch=arm64 ;;
  *) die "unknown architecture of $bin_dir/berth; set BERTH_DEB_ARCH" ;;
  esac
fi

mkdir -p "$out"
stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# unit NAME [SED-ARGS...]: packaging/systemd/NAME for the package: binaries in /usr/bin and a
# higher open-files limit, plus the package's own edits given as sed arguments.
unit() {
  local name=$1
  shift
  mkdir -p "$stage/${name%.service}/lib/systemd/system"
  sed -e "1i # Generated from packaging/systemd/$name by packaging/deb/build.sh." \
    -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e '/^UMask=/a LimitNOFILE=65536' \
    "$@" "packaging/systemd/$name" >"$stage/${name%.service}/lib/systemd/system/$name"
}

# build_deb PACKAGE DEPENDS DESCRIPTION: adds the copyright file, control files and maintainer
# scripts to the tree $stage/PACKAGE and builds the .deb from it.
build_deb() {
  local pkg=$1 depends=$2 description=$3 root=$stage/$1 size script
  local deb=$out/${pkg}_${deb_version}_${arch}.deb
  install -D -m 0644 "$src/copyright" "$root/usr/share/doc/$pkg/copyright"
  # Apparent sizes: a copy of a sparse binary takes fewer blocks than it will once unpacked.
  size=$(du -sk --apparent-size "$root" | cut -f1)

  install -d -m 0755 "$root/DEBIAN"
  {
    echo "Package: $pkg"
    echo "Version: $deb_version"
    echo "Architecture: $arch"
    echo "Maintainer: berth developers <berth@localhost>"
    echo "Installed-Size: $size"
    [[ -z $depends ]] || echo "Depends: $depends"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Description: $description"
  } >"$root/DEBIAN/control"
  for script in postinst prerm postrm; do
    install -m 0755 "$src/$pkg.$script" "$root/DEBIAN/$script"
  done
  # Everything under /etc is a conffile (as debhelper does it); md5sums cover the rest, for
  # `dpkg --verify`.
  if [[ -d $root/etc ]]; then
    (cd "$root" && find etc -type f -printf '/%p\n' | LC_ALL=C sort) >"$root/DEBIAN/conffiles"
  fi
  (cd "$root" && find . \( -path ./DEBIAN -o -path ./etc \) -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

  dpkg-deb --root-owner-group --build "$root" "$deb" >&2
  echo "$deb"
}

# berth: the controller and CLI, and the agent binary for hosts that install themselves from
# the controller.
install -D -m 0755 "$bin_dir/berth" "$stage/berth/usr/bin/berth"
install -D -m 0755 "$bin_dir/berth-agent" "$stage/berth/usr/lib/berth/berth-agent"
install -D -m 0644 "$src/berth.default" "$stage/berth/etc/default/berth"
# Shell completions and man pages, made by the binary itself (when it runs on this machine).
if "$bin_dir/berth" completion bash >/dev/null 2>&1; then
  share=$stage/berth/usr/share
  install -d -m 0755 "$share/bash-completion/completions" "$share/zsh/vendor-completions" \
    "$share/fish/vendor_completions.d" "$share/man/man1"
  "$bin_dir/berth" completion bash >"$share/bash-completion/completions/berth"
  "$bin_dir/berth" completion zsh >"$share/zsh/vendor-completions/_berth"
  "$bin_dir/berth" completion fish >"$share/fish/vendor_completions.d/berth.fish"
  "$bin_dir/berth" man "$share/man/man1" 2>/dev/null
  gzip -9n "$share/man/man1/"*.1
  chmod 0644 "$share/bash-completion/completions/berth" "$share/zsh/vendor-completions/_berth" \
    "$share/fish/vendor_completions.d/berth.fish" "$share/man/man1/"*.1.gz
else
  echo "build.sh: $bin_dir/berth does not run here; no completions or man pages in the package" >&2
fi
# shellcheck disable=SC2016 # $BERTH_SERVE_ARGS is for systemd to expand
unit berth.service \
  -e '/^\[Service\]$/a User=berth\nGroup=berth' \
  -e '/^Environment=BERTH_DATA_DIR=/a EnvironmentFile=-/etc/default/berth' \
  -e '/^ExecStart=/s/$/ $BERTH_SERVE_ARGS/'
build_deb berth 'adduser | passwd' "berth controller and CLI: clusters on Linux fleets without SSH
 berth installs and runs clusters on fleets of Linux hosts without SSH. The
 controller stores clusters in SQLite and serves bundles and signed plans over
 HTTPS; an agent on every host pulls its work, runs it and reports back.
 .
 This package holds the controller (berth.service, enabled but not started:
 set --advertise-url in /etc/default/berth first), the berth command-line
 client, and the agent binary for hosts that install it from the controller."

# berth-agent: the agent, run by systemd as root (its hooks install software).
install -D -m 0755 "$bin_dir/berth-agent" "$stage/berth-agent/usr/bin/berth-agent"
unit berth-agent.service
build_deb berth-agent '' "berth agent: runs the work a berth controller plans for this host
 berth installs and runs clusters on fleets of Linux hosts without SSH. The
 agent dials out to its controller over mutual TLS, pulls bundles and signed
 plans, runs their hooks on this host and reports back.
 .
 berth-agent.service runs as root, since hooks install software. It starts
 once /etc/berth/agent.env holds the join settings from the controller's
 \`berth token create\`; the first start joins, later ones only run."
