# Shared by the etcd hooks. Each member's data and process belong to its host: the data dir
# and pid file live in the cluster directory beside the rootfs, and etcd listens on this
# host's own address.
STATE=$BERTH_ROOTFS/../etcd
DATA=$STATE/data
PIDFILE=$STATE/etcd.pid
ETCD=$BERTH_ROOTFS/bin/etcd
ETCDCTL=$BERTH_ROOTFS/bin/etcdctl
IP=$BERTH_HOST_IP
CLIENT=http://$IP:$ETCD_CLIENT_PORT
PEER=http://$IP:$ETCD_PEER_PORT
export ETCDCTL_API=3
mkdir -p "$STATE"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# start_etcd INITIAL_CLUSTER STATE
start_etcd() {
  if running; then echo "etcd already running (pid $(cat "$PIDFILE"))"; return 0; fi
  setsid "$ETCD" --name "$BERTH_HOST" --data-dir "$DATA" \
    --listen-client-urls "$CLIENT,http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "$CLIENT" \
    --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" \
    --initial-cluster "$1" --initial-cluster-state "$2" \
    >"$STATE/etcd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  i=0
  until "$ETCDCTL" --endpoints "$CLIENT" endpoint health >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 120 ] || ! running; then
      echo "etcd did not become healthy; its log:" >&2
      tail -20 "$STATE/etcd.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "etcd member $BERTH_HOST is healthy at $CLIENT"
}

stop_etcd() {
  if running; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    i=0
    while running && [ "$i" -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
    running && kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
    echo "stopped etcd on $BERTH_HOST"
  fi
  rm -f "$PIDFILE"
}
