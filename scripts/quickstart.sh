#!/usr/bin/env bash
# berth quickstart: build, start a controller with its embedded SQLite store in a temp dir,
# enroll a local agent over mutual TLS, and show it in `berth get hosts`.
#
#   scripts/quickstart.sh          # run, show, clean up
#   scripts/quickstart.sh --keep   # leave controller and agent running; prints how to stop them
set -euo pipefail
keep=false
[[ ${1:-} == --keep ]] && keep=true

cd "$(dirname "$0")/.."
echo "==> building berth and berth-agent"
cargo build --quiet -p berth-controller -p berth-agent
bin=$PWD/target/debug

work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
export BERTH_DATA_DIR=$work/controller
ctl_pid= agent_pid=
cleanup() {
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

echo "==> creating a bootstrap token"
join=$("$bin/berth" token create --ttl 10m --uses 1)
echo "    $join"

echo "==> enrolling a local agent (CA pinned, key generated on the host, mutual TLS from now on)"
# shellcheck disable=SC2086
"$bin/"$join --name quickstart-host --data-dir "$work/agent"
"$bin/berth-agent" run --data-dir "$work/agent" --poll-wait 5s >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
  grep -q "connected to controller" "$work/agent.log" && break
  sleep 0.1
done

echo "==> berth get hosts"
"$bin/berth" get hosts
if $keep; then
  echo
  echo "Controller pid $ctl_pid, agent pid $agent_pid; logs in $work."
  echo "Try: BERTH_DATA_DIR=$BERTH_DATA_DIR $bin/berth get hosts -o yaml"
  echo "Stop: kill $agent_pid $ctl_pid && rm -rf $work"
fi
