#!/bin/sh
# berth-agent installer, served by the berth controller at /v1/install/agent.sh.
#
# Run it through the line `berth token create --install` prints. That line carries the
# controller's CA certificate and this script's sha256: it fetched the script over TLS
# that trusts that CA and nothing else (the system's CA store is not consulted), and ran
# it only after its digest matched. This script downloads the same way, so every byte
# below comes from the controller the line names.
# Needs: sh, curl (or GNU wget built with GnuTLS), sha256sum (coreutils or busybox),
# uname, mkdir, mv, chmod, tr, sed, readlink.
#
# Set by the line:
#   BERTH_URL             controller URL
#   BERTH_TOKEN_FILE      file holding the bootstrap token (the line writes it 0600, so
#                         the token never appears in a command line or an environment)
#   BERTH_CA_HASH         sha256:<hex> of the controller's CA (the agent checks it again)
#   BERTH_CA_FILE         the CA certificate the line verified the controller with
# May be set by the operator (like INSTALL_K3S_*):
#   BERTH_TOKEN           the bootstrap token itself, when there is no BERTH_TOKEN_FILE
#   BERTH_INSTALL_DIR     where berth-agent goes                        [/usr/local/bin]
#   BERTH_AGENT_DATA_DIR  identity, bundles, journal, logs              [/var/lib/berth-agent]
#   BERTH_NAME            this host's name in berth                     [its hostname]
#   BERTH_SKIP_SYSTEMD=1  never install a systemd unit: run in the background, pid file
#                         in the data dir (also what happens when systemd is not running)
#   BERTH_SKIP_START=1    install and enroll, start nothing
#   BERTH_REENROLL=1      replace the identity of an enrolled host (the line of
#                         `berth token create --install --reenroll NAME` sets it)
#
# Re-running it is harmless: an enrolled host is not enrolled again, an identical binary is
# not replaced, a running agent is left running (restarted only when its binary changed).
# A host enrolled with another controller is refused before anything changes.
# It installs berth-agent-uninstall.sh next to the binary.
set -eu
umask 022

say() { echo "berth-install: $*" >&2; }
fail() { echo "berth-install: error: $*" >&2; exit 1; }

[ -n "${BERTH_URL:-}" ] || fail "BERTH_URL is not set; run the line \`berth token create --install\` prints"
[ -n "${BERTH_CA_HASH:-}" ] || fail "BERTH_CA_HASH is not set; run the line \`berth token create --install\` prints"
[ -r "${BERTH_CA_FILE:-}" ] || fail "BERTH_CA_FILE is not a readable file; run the line \`berth token create --install\` prints"

install_dir=${BERTH_INSTALL_DIR:-/usr/local/bin}
data_dir=${BERTH_AGENT_DATA_DIR:-/var/lib/berth-agent}
# Both go into a unit file and the uninstall script (which removes the data dir): absolute,
# plain characters, already normal (no `.` or `..` parts, no `//`, no trailing `/`), so
# that no spelling of `/` (`//`, `/.`, `/usr/..`) passes for another directory.
for p in "$install_dir" "$data_dir"; do
  case $p in
    *[!A-Za-z0-9._/-]* | [!/]*) fail "\`$p\` must be an absolute path of letters, digits, . _ - /" ;;
    / | */ | *//* | */./* | */. | */../* | */..) fail "\`$p\` must be a normal absolute path other than / (no \`.\` or \`..\` parts, no \`//\`, no trailing /)" ;;
  esac
done
bin=$install_dir/berth-agent
uninstall=$install_dir/berth-agent-uninstall.sh
unit=/etc/systemd/system/berth-agent.service
pidfile=$data_dir/agent.pid

case $(uname -s) in
  Linux) os=linux ;;
  *) fail "berth-agent runs on Linux; this is $(uname -s)" ;;
esac
case $(uname -m) in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) arch=$(uname -m) ;;
esac

# An empty directory given to the clients as their CA directory, so that the controller's
# CA is the only one trusted: curl with --cacert alone still consults its built-in CA
# path (/etc/ssl/certs on Debian), and GNU wget loads the system store unless it is given
# a CA directory. (Created below, inside the work dir.)
no_system_cas=

# fetch URL FILE: download over TLS verified against the controller's CA only.
fetch() {
  if command -v curl >/dev/null 2>&1; then
    # -q first: no ~/.curlrc (an `insecure` there would undo all of this).
    curl -q -fsS --proto =https --cacert "$BERTH_CA_FILE" --capath "$no_system_cas" -o "$2" "$1"
  elif gnutls_wget; then
    # --no-config: no wgetrc (check_certificate=off there would undo all of this).
    wget --no-config -q --ca-certificate="$BERTH_CA_FILE" --ca-directory="$no_system_cas" -O "$2" "$1"
  else
    fail "this host needs curl, or GNU wget built with GnuTLS: other wget builds (OpenSSL, busybox) also trust the system's CA store, so a server with a certificate from any CA there could answer for the controller"
  fi
}

# gnutls_wget: whether `wget` is GNU wget on GnuTLS, which trusts only the CA file and the
# CA directory it is given (checked with an empty directory against a system store).
gnutls_wget() {
  case $(wget --version 2>/dev/null) in
    *+ssl/gnutls*) return 0 ;;
    *) return 1 ;;
  esac
}

# sha256 FILE: the hex digest.
sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | { read -r h _; echo "$h"; }
  elif command -v busybox >/dev/null 2>&1; then
    busybox sha256sum "$1" | { read -r h _; echo "$h"; }
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | { read -r h _; echo "$h"; }
  else
    fail "no sha256 tool (sha256sum, busybox or shasum) to check the agent binary with"
  fi
}

# agent_pid: the pid of the background agent this script started, if it still runs: the
# pid file's process must be running $bin itself (or the $bin it replaced), not merely a
# process whose command line mentions berth-agent. /proc/PID/exe names the resolved path,
# so $real_bin is $bin with the install dir's symlinks resolved (set once it exists).
real_bin=$bin
agent_pid() {
  [ -f "$pidfile" ] || return 1
  read -r p <"$pidfile" || return 1
  case $p in '' | *[!0-9]*) return 1 ;; esac
  case $(readlink "/proc/$p/exe" 2>/dev/null) in
    "$real_bin" | "$real_bin (deleted)") echo "$p" ;;
    *) return 1 ;;
  esac
}

use_systemd() {
  [ "${BERTH_SKIP_SYSTEMD:-}" != 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# 0. A host enrolled with another controller stays with it: say so before changing anything.
enrolled=0
if [ -f "$data_dir/identity/agent.json" ]; then
  enrolled=1
  [ "${BERTH_REENROLL:-}" = 1 ] || [ -r "$data_dir/identity/ca.crt" ] ||
    fail "the identity in $data_dir/identity is incomplete (no readable ca.crt); nothing was changed. Move that directory aside and run this line again to enroll anew"
  if [ "${BERTH_REENROLL:-}" != 1 ] &&
    [ "$(tr -d ' \t\r\n' <"$data_dir/identity/ca.crt" 2>/dev/null)" != "$(tr -d ' \t\r\n' <"$BERTH_CA_FILE")" ]; then
    other=$(sed -n 's/.*"controller" *: *"\([^"]*\)".*/\1/p' "$data_dir/identity/agent.json" | head -n 1)
    name=$(sed -n 's/.*"name" *: *"\([^"]*\)".*/\1/p' "$data_dir/identity/agent.json" | head -n 1)
    fail "this host is enrolled as \`${name:-?}\` with another controller (${other:-unknown}, identity in $data_dir/identity); this line is for $BERTH_URL. Nothing was changed. To move the host: run $uninstall here (stops the agent, removes $data_dir), \`berth host delete ${name:-NAME}\` on the old controller, then this line again; or give BERTH_AGENT_DATA_DIR and BERTH_INSTALL_DIR other paths to run a second agent"
  fi
fi

mkdir -p "$install_dir"
real_bin=$(cd "$install_dir" && pwd -P)/berth-agent
work=$(mktemp -d "$install_dir/.berth-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dash and busybox ash skip the EXIT trap when a signal ends them: exit instead.
trap 'exit 130' INT TERM HUP
no_system_cas=$work/no-system-cas
mkdir "$no_system_cas"

# 1. The agent binary, checked against the digest the controller publishes.
base=$BERTH_URL/v1/install/berth-agent/$os/$arch
fetch "$base/sha256" "$work/sha256" ||
  fail "the controller has no berth-agent for $os/$arch (add one with \`berth agent-binary add FILE --arch $arch\`)"
read -r want <"$work/sha256"
changed=0
if [ -x "$bin" ] && [ "$(sha256 "$bin")" = "$want" ]; then
  say "berth-agent $want already installed at $bin"
else
  say "downloading berth-agent for $os/$arch"
  fetch "$base" "$work/berth-agent"
  got=$(sha256 "$work/berth-agent")
  [ "$got" = "$want" ] || fail "the downloaded berth-agent has sha256 $got, the controller published $want; nothing was installed"
  chmod 0755 "$work/berth-agent"
  mv -f "$work/berth-agent" "$bin"
  changed=1
  say "installed $bin (sha256 $want)"
fi

# 2. The uninstall script, with this installation's paths.
cat >"$work/uninstall" <<UNINSTALL
#!/bin/sh
# Removes what berth-agent's installer put on this host: the agent, its unit or pid file,
# the binary, this script and (unless BERTH_KEEP_DATA=1) its data dir $data_dir.
# The controller still lists the host: run \`berth host delete NAME\` there.
set -u
if [ -f "$unit" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now berth-agent.service 2>/dev/null || true
  rm -f "$unit"
  systemctl daemon-reload 2>/dev/null || true
fi
if [ -f "$pidfile" ] && read -r p <"$pidfile"; then
  # Only the agent itself: the pid file's process must run $real_bin.
  case \$(readlink "/proc/\$p/exe" 2>/dev/null) in
    "$real_bin" | "$real_bin (deleted)")
      kill "\$p" 2>/dev/null || true
      i=0
      while kill -0 "\$p" 2>/dev/null && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
      ;;
  esac
  rm -f "$pidfile"
fi
rm -f "$bin"
[ "\${BERTH_KEEP_DATA:-}" = 1 ] || rm -rf "$data_dir"
rm -f "\$0"
echo "berth-agent removed"
UNINSTALL
chmod 0755 "$work/uninstall"
mv -f "$work/uninstall" "$uninstall"

# 3. Enrollment: once; again only when asked to re-enroll. The token goes to the agent in
# a file (0600), never on a command line.
if [ "$enrolled" = 1 ] && [ "${BERTH_REENROLL:-}" != 1 ]; then
  say "already enrolled with this controller (identity in $data_dir/identity); not joining again"
else
  token_file=${BERTH_TOKEN_FILE:-}
  if [ -z "$token_file" ]; then
    [ -n "${BERTH_TOKEN:-}" ] || fail "neither BERTH_TOKEN_FILE nor BERTH_TOKEN is set; run the line \`berth token create --install\` prints"
    token_file=$work/token
    (umask 077 && printf '%s\n' "$BERTH_TOKEN" >"$token_file")
  fi
  set -- join --controller "$BERTH_URL" --ca-hash "$BERTH_CA_HASH" --data-dir "$data_dir" --token-file "$token_file"
  [ -z "${BERTH_NAME:-}" ] || set -- "$@" --name "$BERTH_NAME"
  [ "${BERTH_REENROLL:-}" != 1 ] || set -- "$@" --reenroll
  env -u BERTH_TOKEN -u BERTH_JOIN_TOKEN "$bin" "$@"
  changed=1
fi

# 4. Keep it running.
if [ "${BERTH_SKIP_START:-}" = 1 ]; then
  say "not starting the agent (BERTH_SKIP_START=1); start it with: $bin run --data-dir $data_dir"
elif use_systemd; then
  cat >"$work/unit" <<UNIT
[Unit]
Description=berth agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=$bin run --data-dir $data_dir
Restart=always
RestartSec=5
LimitNOFILE=65536
UMask=0077

[Install]
WantedBy=multi-user.target
UNIT
  mv -f "$work/unit" "$unit"
  systemctl daemon-reload
  if [ "$changed" = 1 ]; then
    systemctl enable berth-agent.service
    systemctl restart berth-agent.service
  else
    systemctl enable --now berth-agent.service
  fi
  say "berth-agent runs as the systemd unit berth-agent.service"
else
  if p=$(agent_pid); then
    if [ "$changed" = 0 ]; then
      say "berth-agent already runs (pid $p)"
      exit 0
    fi
    kill "$p" 2>/dev/null || true
    i=0
    while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  fi
  # The agent needs none of the installer's variables (the token least of all).
  unset BERTH_TOKEN BERTH_TOKEN_FILE BERTH_URL BERTH_CA_HASH BERTH_CA_FILE
  nohup "$bin" run --data-dir "$data_dir" >>"$data_dir/agent.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  say "berth-agent runs in the background (pid $!, log $data_dir/agent.log, pid file $pidfile)"
fi
