#!/usr/bin/env bash
# Benchmark: `berth apply --wait` of a one-host cluster with a no-hook bundle of a few KB,
# from the command's start to Running (check, distribute and the phases after them, each a
# report and a released step away). Target < 300 ms. Prints the median and p90 of
# BENCH_RUNS (default 15) applies, each a new cluster, against the target.
#   bench/apply-latency.sh
set -euo pipefail
BENCH_DIR=$(mktemp -d /tmp/berth-apply-latency.XXXXXX) BENCH_TEMP=1
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
runs=${BENCH_RUNS:-15}
start_controller
enroll_agent h1
run_agent

mkdir -p "$work/src/etc"
printf 'apiVersion: berth.dev/v1\nkind: Bundle\nname: tiny\nversion: v1\ntype: rootfs\n' >"$work/src/bundle.yaml"
head -c 4096 /dev/urandom | base64 >"$work/src/etc/payload.txt"
"$bin/berth" bundle push "$work/src" --tag tiny:v1 >/dev/null

times=()
for i in $(seq "$runs"); do
  printf 'apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: lat%d\nspec:\n  hosts:\n  - ips: [h1]\n    roles: [master]\n  image:\n  - tiny:v1\n' "$i" >"$work/c.yaml"
  s=$(date +%s%N)
  "$bin/berth" apply -f "$work/c.yaml" --wait >/dev/null 2>"$work/apply.log" || { cat "$work/apply.log" >&2; exit 1; }
  e=$(date +%s%N)
  times+=($(((e - s) / 1000000)))
  if ((times[-1] > 2000)); then # keep the evidence of an outlier
    cp "$work/controller.log" "$work/slow-$i-controller.log"; cp "$work/agent.log" "$work/slow-$i-agent.log"
    cp "$work/apply.log" "$work/slow-$i-apply.log"
    echo "run $i took ${times[-1]} ms; logs kept in $work/slow-$i-*" >&2
  fi
  "$bin/berth" reset "lat$i" --wait >/dev/null 2>&1
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}' <<<"$sorted")
p90=$(awk -v n="$runs" '{a[NR]=$1} END {i=int(n*0.9+0.999); if(i<1)i=1; print a[i]}' <<<"$sorted")
echo "runs (ms): ${times[*]}"
echo "apply --wait to Running, one host, no hooks: median ${median} ms, p90 ${p90} ms (target 300 ms: $(awk -v m="$median" 'BEGIN{printf "%.2f", m/300}')x)"
