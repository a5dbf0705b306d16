#!/usr/bin/env bash
# Fleet benchmark: one controller on SQLite, N real agents from berth-fleetsim (real keys,
# mutual TLS, the agent's own poll loop, executor and spool), one apply over M of them
# with a bundle that has no hooks.
#
#   bench/fleet.sh [AGENTS] [CLUSTER_HOSTS]       (defaults 1000 and AGENTS)
#
# Prints enroll rate, idle controller CPU/RSS, first-plan fan-out, time to Running, report
# latency p50/p99 and errors by kind, with the simulator's own CPU beside the
# controller's. FLEET_ARGS adds berth-fleetsim flags (e.g. "-o json --idle 30s");
# SERVE_ARGS adds `berth serve` flags. The simulator runs at nice SIM_NICE (default 19): on
# shared cores the controller gets the CPU it asks for, as on its own machine, and the
# simulator what is left (at nice 10 its 8 runtime threads still took about a third of
# the cores from the controller in a fan-out); it prints the controller's own latencies (from
# GET /metrics) beside its own. FLEET_ARGS=--wire also times the first plans and every
# report on the wire (tcpdump on lo from the start, the agents' TLS secrets, decrypted by
# tshark afterwards; kernel timestamps: what the agents would see, without the simulator's
# own CPU queue; needs `apt-get install tcpdump tshark`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agents=${1:-1000}
hosts=${2:-$agents}
work=${BENCH_DIR:-/tmp/berth-fleet}
sim_dir=${FLEET_WORK_DIR:-/dev/shm/berth-fleetsim}

echo "==> building release binaries" >&2
(cd "$root" && cargo build --release --quiet -p berth-controller -p berth-agent -p berth-fleetsim)
bin=$root/target/x86_64-unknown-linux-gnu/release

pid=
cleanup() {
  if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  rm -rf "$sim_dir"
}
trap cleanup EXIT
rm -rf "$work" "$sim_dir"
mkdir -p "$work/bundle"
port=$((30000 + RANDOM % 20000))
export BERTH_DATA_DIR=$work/controller
# shellcheck disable=SC2086
"$bin/berth" serve --listen "127.0.0.1:$port" ${SERVE_ARGS:-} >"$work/controller.log" 2>&1 &
pid=$!
for _ in $(seq 100); do "$bin/berth" get hosts >/dev/null 2>&1 && break; sleep 0.1; done
export BERTH_TOKEN
BERTH_TOKEN=$(cat "$BERTH_DATA_DIR/pki/admin.token")
ca_hash=$("$bin/berth" token create --ttl 1m -o json | sed -n 's/.*"ca_hash": "\([^"]*\)".*/\1/p')

printf 'apiVersion: berth.dev/v1\nkind: Bundle\nname: nohooks\nversion: v1\ntype: rootfs\n' >"$work/bundle/bundle.yaml"
mkdir -p "$work/bundle/etc" && echo "fleet" >"$work/bundle/etc/motd"
"$bin/berth" bundle push "$work/bundle" --tag nohooks:v1 >/dev/null

echo "==> $agents agents, one apply over $hosts of them (controller pid $pid, log $work/controller.log)" >&2
# shellcheck disable=SC2086
nice -n "${SIM_NICE:-19}" "$bin/berth-fleetsim" run --controller "https://127.0.0.1:$port" --ca-hash "$ca_hash" \
  --agents "$agents" --cluster-hosts "$hosts" --bundle nohooks:v1 --controller-pid "$pid" \
  --work-dir "$sim_dir" ${FLEET_ARGS:-}
