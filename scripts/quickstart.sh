#!/usr/bin/env bash
# berth quickstart: build, start a controller with its embedded SQLite store in a temp dir,
# and install the example cluster (examples/hello + examples/hello-app) on this machine with
# `berth run --single`, which enrolls a local agent over mutual TLS. Ends with the status.
#
#   scripts/quickstart.sh          # run, show, clean up
#   scripts/quickstart.sh --keep   # leave controller and agent running; prints the lines to
#                                  # paste to use them, and how to stop them
set -euo pipefail
keep=false
[[ ${1:-} == --keep ]] && keep=true

cd "$(dirname "$0")/.."
echo "==> building berth and berth-agent (a few minutes the first time)"
cargo build -p berth-controller -p berth-agent
bin=$PWD/target/x86_64-unknown-linux-gnu/debug  # .cargo/config.toml names the target (static build)

work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
export BERTH_DATA_DIR=$work/controller
ctl_pid=
cleanup() {
  local agent_pid
  agent_pid=$(cat "$BERTH_DATA_DIR/local-agent/agent.pid" 2>/dev/null || true)
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null || true
  [[ -n $ctl_pid ]] && kill "$ctl_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
$keep || trap cleanup EXIT

echo "==> starting the controller on https://127.0.0.1:$port (data in $BERTH_DATA_DIR)"
"$bin/berth" serve --listen "127.0.0.1:$port" >"$work/controller.log" 2>&1 &
ctl_pid=$!
for _ in $(seq 100); do
  "$bin/berth" get hosts >/dev/null 2>&1 && break
  kill -0 "$ctl_pid" 2>/dev/null || { cat "$work/controller.log"; exit 1; }
  sleep 0.1
done

echo "==> berth run examples/hello examples/hello-app --single"
"$bin/berth" run examples/hello examples/hello-app --single --cluster hello -e GREETING=bonjour

echo
echo "==> berth get hosts"
"$bin/berth" get hosts
echo
echo "==> what the hooks wrote (rendered template and install log)"
cat "$work/controller/local-agent/clusters/hello/rootfs/etc/hello.conf"
"$bin/berth" logs hello --host local --step install
echo
if $keep; then
  echo "The controller (pid $ctl_pid) and the local agent keep running; logs in $work."
  echo "Paste these two lines, then try the commands after them:"
  echo
  echo "  export BERTH_DATA_DIR=$BERTH_DATA_DIR PATH=$bin:\$PATH"
  echo "  berth status hello --show-outputs"
  echo
  echo "  berth get events hello                  # what happened, in order"
  echo "  berth exec hello -- uname -a            # a command through the agent, no SSH"
  echo "  berth logs hello --host local           # every step's log"
  echo "  berth reset hello --wait                # clean hooks, then the cluster is gone"
  echo
  echo "Stop everything: kill \$(cat $BERTH_DATA_DIR/local-agent/agent.pid) $ctl_pid && rm -rf $work"
else
  echo "Done; the controller and agent are stopped and removed. To keep them and try the"
  echo "commands of the README's tour: scripts/quickstart.sh --keep"
fi
