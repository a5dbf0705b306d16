#!/usr/bin/env bash
# Builds the Debian packages with packaging/deb/build.sh (BERTH_BIN_DIR and BERTH_DEB_ARCH
# pass through) and checks them:
#   1. control fields and members, the exact file lists with modes, and the units generated
#      from packaging/systemd/ (exactly the package's edits, no /usr/local path left);
#   2. `systemd-analyze verify` of both units, warnings included (when it is installed);
#   3. install (twice), remove and purge of both packages with `dpkg --root` in a throwaway
#      root where the maintainer scripts run chrooted and without systemd: the berth user and
#      group, the data dirs, runnable binaries, and what remove keeps and purge deletes.
# Runs as root (dpkg --root, chroot, mounts in a private mount namespace):
#   BERTH_BIN_DIR=target/x86_64-unknown-linux-gnu/debug packaging/deb/check.sh
set -euo pipefail

self=$(realpath "$0")
# build.sh runs from the repository root: BERTH_BIN_DIR may be relative to the caller's.
if [[ -n ${BERTH_BIN_DIR:-} ]]; then
  BERTH_BIN_DIR=$(realpath -m "$BERTH_BIN_DIR")
fi
cd "$(dirname "$self")/../.."

fail() {
  echo "check.sh: FAIL: $*" >&2
  exit 1
}

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
deb_version=${version//-/\~}

# ---- 3. Install test, run by `unshare --mount` (below) as: check.sh --install-test WORK DEBS.

# make_root: $root, a minimal root for dpkg --root. The host's /usr (and /bin, /sbin, /lib,
# /lib64 unless they are usrmerge symlinks, which are copied as such) is the lower layer of an
# overlay: the scripts find sh, adduser and getent there, while what the packages install
# lands in the tmpfs upper layer and the host's tree is never written. /etc holds copies of
# the account databases and what adduser/useradd read; /run has no systemd in it.
make_root() {
  local dir file dep
  mkdir -p "$root"/{etc,dev,proc,tmp,run,var/log,var/lib/dpkg/{info,updates,triggers}}
  chmod 1777 "$root/tmp"
  for dir in usr bin sbin lib lib64; do
    if [[ -L /$dir ]]; then
      ln -s "$(readlink "/$dir")" "$root/$dir"
    elif [[ -d /$dir ]]; then
      mkdir -p "$root/$dir" "$work/overlay/$dir/upper" "$work/overlay/$dir/work"
      mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$work/overlay/$dir/upper,workdir=$work/overlay/$dir/work" "$root/$dir"
    fi
  done
  mount --bind -o ro /dev "$root/dev"
  mount -t proc proc "$root/proc"
  for file in passwd group shadow gshadow nsswitch.conf login.defs adduser.conf deluser.conf \
    default/useradd ld.so.cache ld.so.conf ld.so.conf.d; do
    if [[ -e /etc/$file ]]; then
      mkdir -p "$(dirname "$root/etc/$file")"
      cp -a "/etc/$file" "$root/etc/$file"
    fi
  done
  touch "$root/var/lib/dpkg/"{status,available}
  # dpkg checks Depends against this root's own database: declare the host's packages that
  # satisfy berth's (adduser, passwd), whose files this root sees through /usr.
  for dep in $(dpkg-deb -f "$deb_berth" Depends | sed 's/([^)]*)//g; s/[,|]/ /g'); do
    if [[ $(dpkg-query -W -f '${db:Status-Status}' "$dep" 2>/dev/null) == installed ]]; then
      { dpkg-query -s "$dep" && echo; } >>"$root/var/lib/dpkg/status"
      cp "/var/lib/dpkg/info/$dep.list" "$root/var/lib/dpkg/info/"
    fi
  done
}

dpkg_root() {
  dpkg --root="$root" --log="$root/var/log/dpkg.log" "$@"
}

# expect_stat PATH "UID:GID MODE TYPE", PATH inside the root.
expect_stat() {
  local got
  got=$(stat -c '%u:%g %a %F' "$root$1" 2>&1) || fail "$1: $got"
  [[ $got == "$2" ]] || fail "$1 is '$got', expected '$2'"
}

expect_absent() {
  local path
  for path; do
    [[ ! -e $root$path && ! -L $root$path ]] || fail "$path still exists"
  done
}

expect_status() {
  local pkg got
  for pkg in berth berth-agent; do
    got=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Status}' "$pkg" 2>/dev/null) || true
    [[ $got == "$1" ]] || fail "package $pkg: status '$got', expected '$1'"
  done
}

# berth_account: prints "UID GID" of the berth user after checking it is a system user with
# its group, home and shell.
berth_account() {
  local entry uid gid home shell
  entry=$(grep '^berth:' "$root/etc/passwd") || fail "no berth user in the root's /etc/passwd"
  IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
  ((uid < 1000)) || fail "berth user has uid $uid, not a system uid"
  [[ $home == /var/lib/berth && $shell == /usr/sbin/nologin ]] ||
    fail "berth user: home $home, shell $shell"
  grep -q "^berth:[^:]*:$gid:" "$root/etc/group" || fail "no berth group with gid $gid"
  echo "$uid $gid"
}

expect_installed() {
  local account uid gid bin got
  expect_status "install ok installed"
  account=$(berth_account)
  read -r uid gid <<<"$account"
  expect_stat /var/lib/berth "$uid:$gid 700 directory"
  expect_stat /var/lib/berth-agent "0:0 700 directory"
  expect_stat /etc/default/berth "0:0 644 regular file"
  for bin in /usr/bin/berth /usr/lib/berth/berth-agent /usr/bin/berth-agent; do
    got=$(chroot "$root" "$bin" --version) || fail "$bin --version failed"
    [[ $got == "${bin##*/} $version" ]] || fail "$bin --version printed '$got'"
  done
  got=$(dpkg_root --verify berth berth-agent 2>&1) || fail "dpkg --verify: $got"
  [[ -z $got ]] || fail "dpkg --verify: $got"
}

install_test() {
  work=$1 deb_berth=$2 deb_agent=$3
  # Everything lives in a tmpfs that vanishes with this mount namespace.
  mount -t tmpfs -o mode=0755 berth-deb-check "$work"
  root=$work/root
  make_root

  echo "== install"
  dpkg_root -i "$deb_berth" "$deb_agent"
  expect_installed
  echo "== install again"
  dpkg_root -i "$deb_berth" "$deb_agent"
  expect_installed

  # dpkg warns that /lib/systemd/system is not empty: it holds the host's units, which this
  # root's database does not know.
  echo "== remove"
  local account uid gid
  account=$(berth_account)
  read -r uid gid <<<"$account"
  dpkg_root --remove berth berth-agent
  expect_status "deinstall ok config-files"
  expect_absent /usr/bin/berth /usr/lib/berth /usr/bin/berth-agent \
    /lib/systemd/system/berth.service /lib/systemd/system/berth-agent.service
  expect_stat /var/lib/berth "$uid:$gid 700 directory"
  expect_stat /var/lib/berth-agent "0:0 700 directory"
  expect_stat /etc/default/berth "0:0 644 regular file"

  echo "== purge"
  dpkg_root --purge berth berth-agent
  expect_status ""
  expect_absent /var/lib/berth /var/lib/berth-agent /etc/default/berth
  local db
  for db in passwd group shadow gshadow; do
    ! grep -q '^berth:' "$root/etc/$db" || fail "berth still in the root's /etc/$db"
  done
}

if [[ ${1:-} == --install-test ]]; then
  shift
  install_test "$@"
  exit 0
fi

# ---- Build, then checks 1 and 2 on the .deb files, then 3 in a private mount namespace.

[[ $(id -u) == 0 ]] || fail "run as root: the install test uses dpkg --root, chroot and mounts"
arch=${BERTH_DEB_ARCH:-$(dpkg --print-architecture)}
deb_berth=target/deb/berth_${deb_version}_${arch}.deb
deb_agent=target/deb/berth-agent_${deb_version}_${arch}.deb

built=$(packaging/deb/build.sh) || fail "build.sh failed"
[[ $built == "$deb_berth"$'\n'"$deb_agent" ]] ||
  fail "build.sh printed '$built', expected $deb_berth and $deb_agent"

tmp=$(mktemp -d)
trap 'rm -rf --one-file-system "$tmp"' EXIT

# expect_same WHAT EXPECTED ACTUAL: compares two line sets, order ignored.
expect_same() {
  local diff
  if ! diff=$(diff -u --label expected --label actual <(LC_ALL=C sort <<<"$2") <(LC_ALL=C sort <<<"$3")); then
    fail "$1 differs from the expected one:"$'\n'"$diff"
  fi
}

# check_deb DEB PACKAGE EXPECTED-FIELDS EXPECTED-CONTROL-MEMBERS EXPECTED-FILES
# man_pages DEB: the file-list lines of the man pages the package's berth makes (one per
# command), as dpkg-deb lists them.
man_pages() {
  local tmp
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/bin/berth >"$tmp/berth"
  chmod 0755 "$tmp/berth"
  "$tmp/berth" man "$tmp/man" 2>/dev/null
  (cd "$tmp/man" && ls) | LC_ALL=C sort | sed 's|^\(.*\)$|./usr/share/man/man1/\1.gz -rw-r--r-- root/root|'
  rm -rf "$tmp"
}

check_deb() {
  local deb=$1 pkg=$2 size bytes
  echo "== $deb"
  # All fields but the computed Installed-Size and the multi-line Description.
  expect_same "control of $pkg" "$3" "$(dpkg-deb -f "$deb" | grep -Ev '^( |Installed-Size:|Description:)')"
  [[ $(dpkg-deb -f "$deb" Description | sed -n '1p') == *[a-z]* ]] || fail "$pkg: no Description summary"
  (($(dpkg-deb -f "$deb" Description | wc -l) >= 3)) || fail "$pkg: no long Description"
  size=$(dpkg-deb -f "$deb" Installed-Size)
  bytes=$(dpkg-deb -c "$deb" | awk '{ sum += $3 } END { print sum }')
  if ! [[ $size =~ ^[0-9]+$ ]] || ((size * 1024 < bytes)); then
    fail "$pkg: Installed-Size $size KiB, but the files hold $bytes bytes"
  fi
  expect_same "control members of $pkg" "$4" "$(dpkg-deb --ctrl-tarfile "$deb" | tar -tvf - | awk '{ print $6, $1, $2 }')"
  expect_same "file list of $pkg" "$5" "$(dpkg-deb -c "$deb" | awk '{ print $6, $1, $2 }')"
}

check_deb "$deb_berth" berth "\
Package: berth
Version: $deb_version
Architecture: $arch
Maintainer: berth developers <berth@localhost>
Depends: adduser | passwd
Section: admin
Priority: optional" "\
./ drwxr-xr-x root/root
./conffiles -rw-r--r-- root/root
./control -rw-r--r-- root/root
./md5sums -rw-r--r-- root/root
./postinst -rwxr-xr-x root/root
./postrm -rwxr-xr-x root/root
./prerm -rwxr-xr-x root/root" "\
./ drwxr-xr-x root/root
./etc/ drwxr-xr-x root/root
./etc/default/ drwxr-xr-x root/root
./etc/default/berth -rw-r--r-- root/root
./lib/ drwxr-xr-x root/root
./lib/systemd/ drwxr-xr-x root/root
./lib/systemd/system/ drwxr-xr-x root/root
./lib/systemd/system/berth.service -rw-r--r-- root/root
./usr/ drwxr-xr-x root/root
./usr/bin/ drwxr-xr-x root/root
./usr/bin/berth -rwxr-xr-x root/root
./usr/lib/ drwxr-xr-x root/root
./usr/lib/berth/ drwxr-xr-x root/root
./usr/lib/berth/berth-agent -rwxr-xr-x root/root
./usr/share/ drwxr-xr-x root/root
./usr/share/bash-completion/ drwxr-xr-x root/root
./usr/share/bash-completion/completions/ drwxr-xr-x root/root
./usr/share/bash-completion/completions/berth -rw-r--r-- root/root
./usr/share/doc/ drwxr-xr-x root/root
./usr/share/doc/berth/ drwxr-xr-x root/root
./usr/share/doc/berth/copyright -rw-r--r-- root/root
./usr/share/fish/ drwxr-xr-x root/root
./usr/share/fish/vendor_completions.d/ drwxr-xr-x root/root
./usr/share/fish/vendor_completions.d/berth.fish -rw-r--r-- root/root
./usr/share/man/ drwxr-xr-x root/root
./usr/share/man/man1/ drwxr-xr-x root/root
$(man_pages "$deb_berth")
./usr/share/zsh/ drwxr-xr-x root/root
./usr/share/zsh/vendor-completions/ drwxr-xr-x root/root
./usr/share/zsh/vendor-completions/_berth -rw-r--r-- root/root"
[[ $(dpkg-deb --info "$deb_berth" conffiles) == /etc/default/berth ]] || fail "berth: conffiles is not /etc/default/berth"

check_deb "$deb_agent" berth-agent "\
Package: berth-agent
Version: $deb_version
Architecture: $arch
Maintainer: berth developers <berth@localhost>
Section: admin
Priority: optional" "\
./ drwxr-xr-x root/root
./control -rw-r--r-- root/root
./md5sums -rw-r--r-- root/root
./postinst -rwxr-xr-x root/root
./postrm -rwxr-xr-x root/root
./prerm -rwxr-xr-x root/root" "\
./ drwxr-xr-x root/root
./lib/ drwxr-xr-x root/root
./lib/systemd/ drwxr-xr-x root/root
./lib/systemd/system/ drwxr-xr-x root/root
./lib/systemd/system/berth-agent.service -rw-r--r-- root/root
./usr/ drwxr-xr-x root/root
./usr/bin/ drwxr-xr-x root/root
./usr/bin/berth-agent -rwxr-xr-x root/root
./usr/share/ drwxr-xr-x root/root
./usr/share/doc/ drwxr-xr-x root/root
./usr/share/doc/berth-agent/ drwxr-xr-x root/root
./usr/share/doc/berth-agent/copyright -rw-r--r-- root/root"

tree=$tmp/tree
dpkg-deb -x "$deb_berth" "$tree"
dpkg-deb -x "$deb_agent" "$tree"

# check_unit NAME EXPECTED-EDITS: the packaged unit differs from packaging/systemd/NAME with
# /usr/bin paths by exactly these lines ("<" dropped, ">" added).
check_unit() {
  local unit=$tree/lib/systemd/system/$1
  ! grep -n /usr/local "$unit" || fail "$1 still refers to /usr/local"
  expect_same "change of $1 against packaging/systemd/$1" "$2" \
    "$(diff <(sed 's|/usr/local/bin/|/usr/bin/|g' "packaging/systemd/$1") "$unit" | grep '^[<>]')"
}
# shellcheck disable=SC2016 # $BERTH_SERVE_ARGS is for systemd to expand
check_unit berth.service '> # Generated from packaging/systemd/berth.service by packaging/deb/build.sh.
> User=berth
> Group=berth
> EnvironmentFile=-/etc/default/berth
< ExecStart=/usr/bin/berth serve --listen 0.0.0.0:7443
> ExecStart=/usr/bin/berth serve --listen 0.0.0.0:7443 $BERTH_SERVE_ARGS
> LimitNOFILE=65536'
check_unit berth-agent.service '> # Generated from packaging/systemd/berth-agent.service by packaging/deb/build.sh.
> LimitNOFILE=65536'

echo "== systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
  # verify resolves the units' dependencies (sysinit.target, ...) and checks that ExecStart
  # commands exist, both under --root: give the tree the host's units and /bin/sh. It only
  # warns about unknown or malformed settings, so any output is a failure too.
  mkdir -p "$tree/usr/lib/systemd/system" "$tree/bin"
  cp -a /lib/systemd/system/. "$tree/usr/lib/systemd/system/"
  cp /bin/sh "$tree/bin/sh"
  if ! out=$(systemd-analyze verify --root="$tree" "$tree/lib/systemd/system/berth.service" \
    "$tree/lib/systemd/system/berth-agent.service" 2>&1) || [[ -n $out ]]; then
    fail "systemd-analyze verify:"$'\n'"$out"
  fi
else
  echo "skipped: systemd-analyze not installed"
fi

mkdir "$tmp/work"
unshare --mount --propagation private -- "$self" --install-test "$tmp/work" "$deb_berth" "$deb_agent" ||
  fail "install test failed"

echo "deb packages OK: $deb_berth $deb_agent"
