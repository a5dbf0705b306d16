#!/usr/bin/env bash
# Benchmark: one real enrolled agent (`berth-agent run`, default poll hold) left idle for
# BENCH_IDLE_SECS (default 120) against a local controller: its RSS and the CPU seconds it
# used while idle, against the targets (RSS < 15 MiB, no CPU between polls).
#   bench/agent-idle.sh
set -euo pipefail
BENCH_DIR=$(mktemp -d /tmp/berth-agent-idle.XXXXXX) BENCH_TEMP=1
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
secs=${BENCH_IDLE_SECS:-120}
start_controller
enroll_agent idle1
run_agent
agent=$agent_pid
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
