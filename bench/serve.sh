#!/usr/bin/env bash
# Benchmark 1: N concurrent HTTPS clients (curl, HTTP/1.1) download the ~600 MB bundle blob
# from the controller, and the same file from nginx over HTTPS with the same certificate.
# Prints aggregate throughput for both, the ratio, and the controller's RSS growth.
#   bench/serve.sh            (BENCH_RUNS, BENCH_BIG_MB, BENCH_SMALL_FILES, BENCH_DIR tune it)
source "$(dirname "$0")/common.sh"
need nginx curl
setup

# nginx serving the same blob file with the controller's own server certificate.
ngx=$work/nginx; rm -rf "$ngx"; mkdir -p "$ngx/www"
ln -f "$work/bundle.tar.zst" "$ngx/www/blob" 2>/dev/null || cp "$work/bundle.tar.zst" "$ngx/www/blob"
nport=$((port + 1))
cat >"$ngx/nginx.conf" <<NGX
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  server {
    listen 127.0.0.1:$nport ssl;
    ssl_certificate $BERTH_DATA_DIR/pki/server.crt;
    ssl_certificate_key $BERTH_DATA_DIR/pki/server.key;
    ssl_protocols TLSv1.3;
    root $ngx/www;
  }
}
NGX
nginx -c "$ngx/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 1

# One round: N curls at once; prints aggregate MB/s.
round() {
  local target=$1 n=$2 start end
  start=$(now)
  for _ in $(seq "$n"); do
    curl -sf --http1.1 --cacert "$ca" -H "Authorization: Bearer $token" -o /dev/null "$target" &
  done
  wait_curls
  end=$(now)
  echo "$n $blob_size $start $end" | awk '{printf "%.1f\n", $1*$2/1048576/($4-$3)}'
}
wait_curls() { for j in $(jobs -p); do [[ " ${pids[*]} " == *" $j "* ]] || wait "$j"; done; }

base_rss=$(rss_kb "$ctl_pid")
peak=$base_rss
sampler() { while kill -0 "$ctl_pid" 2>/dev/null; do r=$(rss_kb "$ctl_pid"); echo "$r"; sleep 0.05; done >"$work/rss.samples"; }
sampler & sampler_pid=$!; pids+=("$sampler_pid")

printf '%-4s %14s %14s %8s\n' N "berth MB/s" "nginx MB/s" ratio
for n in 1 4 8; do
  b=(); g=()
  for _ in $(seq "$runs"); do
    b+=("$(round "$blob_url" "$n")")
    g+=("$(round "https://127.0.0.1:$nport/blob" "$n")")
  done
  bm=$(printf '%s\n' "${b[@]}" | median); gm=$(printf '%s\n' "${g[@]}" | median)
  printf '%-4s %14s %14s %8s\n' "$n" "$bm" "$gm" "$(awk -v a="$bm" -v b="$gm" 'BEGIN{printf "%.2f", a/b}')"
done
kill "$sampler_pid" 2>/dev/null || true; sleep 0.1
peak=$(sort -n "$work/rss.samples" | tail -1)
echo "controller RSS: start $((base_rss / 1024)) MiB, peak $((peak / 1024)) MiB, growth $(((peak - base_rss) / 1024)) MiB"
