# Shared setup for berth benchmarks: release build, a controller in a temp dir, one
# enrolled agent, and a ~600 MB bundle (large binaries + ~20k small files) pushed to it.
# Sourced by the bench scripts; cleans up on exit.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_DIR:-/tmp/berth-bench}
big_mb=${BENCH_BIG_MB:-120}      # each of 4 large files
small_files=${BENCH_SMALL_FILES:-20000}
runs=${BENCH_RUNS:-3}

need() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # A work dir the script made for this run only (BENCH_TEMP=1) goes with it.
  if [[ ${BENCH_TEMP:-} == 1 && -z ${BENCH_KEEP:-} ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# Release build and a controller on a random loopback port with its data in $work/controller.
start_controller() {
  echo "==> building release binaries" >&2
  (cd "$root" && cargo build --release --quiet -p berth-controller -p berth-agent)
  bin=$root/target/x86_64-unknown-linux-gnu/release
  rm -rf "$work/controller" "$work/agent"
  mkdir -p "$work"
  port=$(( 30000 + RANDOM % 20000 ))
  export BERTH_DATA_DIR=$work/controller
  "$bin/berth" serve --listen "127.0.0.1:$port" >"$work/controller.log" 2>&1 &
  ctl_pid=$!; pids+=("$ctl_pid")
  for _ in $(seq 100); do "$bin/berth" get hosts >/dev/null 2>&1 && break; sleep 0.1; done
  url=https://127.0.0.1:$port
  token=$(cat "$BERTH_DATA_DIR/pki/admin.token")
  ca=$BERTH_DATA_DIR/pki/ca.crt
}

# Enrolls host NAME with its data in $work/agent.
enroll_agent() {
  local join
  join=$("$bin/berth" token create --ttl 1h)
  # shellcheck disable=SC2086 # the join command is split into its words on purpose
  "$bin/"$join --name "$1" --data-dir "$work/agent" 2>/dev/null
}

# Runs the enrolled agent (`berth-agent run`, log in $work/agent.log) until it is Ready.
run_agent() {
  "$bin/berth-agent" run --data-dir "$work/agent" >"$work/agent.log" 2>&1 &
  agent_pid=$!; pids+=("$agent_pid")
  for _ in $(seq 100); do "$bin/berth" get hosts -o json | grep -q '"Ready"' && break; sleep 0.1; done
}

setup() {
  start_controller
  enroll_agent bench

  if [[ ! -f $work/bundle.ok || $(cat "$work/bundle.ok") != "$big_mb/$small_files" ]]; then
    echo "==> generating the bundle: 4 x ${big_mb} MB binaries + $small_files small files" >&2
    rm -rf "$work/src"; mkdir -p "$work/src/bin" "$work/src/small"
    printf 'apiVersion: berth.dev/v1\nkind: Bundle\nname: bench\nversion: v1\ntype: rootfs\n' >"$work/src/bundle.yaml"
    for i in 1 2 3 4; do head -c "${big_mb}M" /dev/urandom >"$work/src/bin/big$i"; done
    (cd "$work/src/small" && head -c $((small_files * 4096)) /dev/urandom | split -b 4096 -a 5 -d - f)
    "$bin/berth" bundle build "$work/src" -o "$work/bundle.tar.zst" >/dev/null
    echo "$big_mb/$small_files" >"$work/bundle.ok"
  fi
  digest=$("$bin/berth" bundle push "$work/bundle.tar.zst" --tag bench:v1 -o json | sed -n 's/.*"digest": "\(sha256:[0-9a-f]*\)".*/\1/p' | head -1)
  # Agents may fetch only the blobs of steps released to them: a cluster of the enrolled
  # host with this bundle releases its first step (no agent runs it here).
  printf 'apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  hosts:\n  - ips: [bench]\n    roles: [master]\n  image:\n  - bench:v1\n' >"$work/Clusterfile"
  "$bin/berth" apply -f "$work/Clusterfile" >/dev/null 2>&1
  blob_url=$url/v1/blobs/sha256/${digest#sha256:}
  blob_size=$(stat -c %s "$work/bundle.tar.zst")
  echo "==> bundle $digest, $((blob_size / 1048576)) MiB packed" >&2
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
