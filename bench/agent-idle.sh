#!/usr/bin/env bash
# Benchmark: one real enrolled agent (`berth-agent run`, default poll hold) left idle for
# BENCH_IDLE_SECS (default 120) against a local controller: its RSS and the CPU seconds it
# used while idle, against the targets (RSS < 15 MiB, no CPU between polls).
#   bench/agent-idle.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${BENCH_IDLE_SECS:-120}
work=$(mktemp -d /tmp/berth-agent-idle.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo build --release --quiet -p berth-controller -p berth-agent)
bin=$root/target/x86_64-unknown-linux-gnu/release
port=$((30000 + RANDOM % 20000))
export BERTH_DATA_DIR=$work/controller
"$bin/berth" serve --listen "127.0.0.1:$port" >"$work/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$bin/berth" get hosts >/dev/null 2>&1 && break; sleep 0.1; done
join=$("$bin/berth" token create --ttl 1h)
# shellcheck disable=SC2086 # the join command is split into its words on purpose
"$bin/"$join --name idle1 --data-dir "$work/agent" 2>/dev/null
"$bin/berth-agent" run --data-dir "$work/agent" >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
for _ in $(seq 100); do "$bin/berth" get hosts -o json | grep -q '"Ready"' && break; sleep 0.1; done
sleep 2 # past start-up

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
c0=$(cpu)
sleep "$secs"
c1=$(cpu)
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
cpu_s=$(awk -v d="$((c1 - c0))" -v t="$ticks" 'BEGIN {printf "%.2f", d / t}')
echo "idle agent over ${secs} s: ${cpu_s} CPU-s; RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB; target < 15 MiB)"
