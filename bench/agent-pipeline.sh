#!/usr/bin/env bash
# Benchmark 2: fetch + verify + unpack of the ~600 MB bundle by the agent (`berth-agent
# fetch --into`, one streaming pass) vs `curl` + `sha256sum` + `zstd -d | tar -x` on the same
# file and disk. Prints median wall times, the ratio, and the agent's peak RSS.
#   bench/agent-pipeline.sh   (BENCH_RUNS, BENCH_BIG_MB, BENCH_SMALL_FILES, BENCH_DIR tune it)
source "$(dirname "$0")/common.sh"
need curl zstd tar time coreutils
setup
agent_dir=$work/agent
cert=$agent_dir/identity/agent.crt key=$agent_dir/identity/agent.key
out=$work/out

agent_run() {
  rm -rf "$agent_dir/cache" "$out"; sync
  local s e
  s=$(now)
  /usr/bin/time -f '%M' -o "$work/agent.rss" "$bin/berth-agent" fetch --digest "$digest" --into "$out" --data-dir "$agent_dir" >/dev/null 2>"$work/agent.log"
  e=$(now)
  awk -v s="$s" -v e="$e" 'BEGIN{printf "%.2f\n", e-s}'
}
shell_run() {
  rm -rf "$out" "$work/shell.blob"; mkdir -p "$out"; sync
  local s e
  s=$(now)
  curl -sf --cacert "$ca" --cert "$cert" --key "$key" -o "$work/shell.blob" "$blob_url"
  echo "${digest#sha256:}  $work/shell.blob" | sha256sum -c --quiet -
  zstd -d -q -c "$work/shell.blob" | tar -x -C "$out"
  e=$(now)
  awk -v s="$s" -v e="$e" 'BEGIN{printf "%.2f\n", e-s}'
}

a=(); s=(); rss=()
for i in $(seq "$runs"); do
  a+=("$(agent_run)"); rss+=("$(cat "$work/agent.rss")")
  s+=("$(shell_run)")
  echo "run $i: agent ${a[-1]} s (peak RSS $((${rss[-1]} / 1024)) MiB), shell ${s[-1]} s" >&2
done
am=$(printf '%s\n' "${a[@]}" | median); sm=$(printf '%s\n' "${s[@]}" | median)
peak=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
echo "agent fetch+verify+unpack: median ${am} s"
echo "curl+sha256sum+zstd|tar:   median ${sm} s"
echo "ratio agent/shell: $(awk -v a="$am" -v b="$sm" 'BEGIN{printf "%.2f", a/b}')   agent peak RSS: $((peak / 1024)) MiB"
rm -rf "$out" "$work/shell.blob" "$agent_dir/cache"
