#!/usr/bin/env bash
# Three token-ledger replicas on one database, behind HAProxy (deploy/lb/haproxy.cfg, HTTP/2
# cleartext both sides). Installs Debian's haproxy with apt-get if missing. Then:
#   1. throughput: token-ledger-bench (usage scenario) through HAProxy, and against one replica
#      directly for comparison;
#   2. drain: a checked load (token-ledger-bench --scenario checked: Grants retried with their
#      idempotency key until acknowledged, then read back) through HAProxy, replica r2 sent
#      SIGTERM at LB_DRAIN_AFTER_SECS and started again at LB_RESTART_AFTER_SECS; the checker
#      shows every acknowledged write present once, no call lost; then `token-ledger verify`.
# Everything runs under $LB_DIR (default /tmp/token-ledger-lb) and is stopped at the end; the
# database (LB_DATABASE, on LB_ADMIN_URL's server) is created fresh and dropped after.
#
#   cargo build --release && deploy/lb/run.sh
#   LB_BENCH_SECS=10 LB_LOAD_SECS=30 deploy/lb/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${BIN_DIR:-$repo/target/release}"
LB_DIR="${LB_DIR:-/tmp/token-ledger-lb}"
LB_ADMIN_URL="${LB_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
LB_DATABASE="${LB_DATABASE:-token_ledger_lb}"
port_base="${LB_PORT_BASE:-55490}"
export LB_LISTEN="127.0.0.1:$port_base"
export LB_R1="127.0.0.1:$((port_base + 1))" LB_R2="127.0.0.1:$((port_base + 2))" \
  LB_R3="127.0.0.1:$((port_base + 3))" LB_STATS="127.0.0.1:$((port_base + 4))"
bench_secs="${LB_BENCH_SECS:-10}"
load_secs="${LB_LOAD_SECS:-30}"
drain_after="${LB_DRAIN_AFTER_SECS:-10}"
restart_after="${LB_RESTART_AFTER_SECS:-20}"
for b in token-ledger token-ledger-bench; do
  [[ -x "$bin/$b" ]] || { echo "$bin/$b missing: cargo build --release first" >&2; exit 1; }
done
if ! command -v haproxy >/dev/null; then
  echo "installing haproxy (Debian) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
haproxy -v | head -1

rm -rf "$LB_DIR"
mkdir -p "$LB_DIR"
db_url="${LB_ADMIN_URL%/*}/$LB_DATABASE"
psql -X -q "$LB_ADMIN_URL" -c "DROP DATABASE IF EXISTS $LB_DATABASE WITH (FORCE)" \
  -c "CREATE DATABASE $LB_DATABASE"

declare -A replica_pid
haproxy_pid=
cleanup() {
  for r in "${!replica_pid[@]}"; do kill "${replica_pid[$r]}" 2>/dev/null || true; done
  [[ -n "$haproxy_pid" ]] && kill "$haproxy_pid" 2>/dev/null
  wait 2>/dev/null
  psql -X -q "$LB_ADMIN_URL" -c "DROP DATABASE IF EXISTS $LB_DATABASE WITH (FORCE)" || true
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 60); do
    if (echo >"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "nothing listens on $1" >&2
  return 1
}
# Starts replica $1 (r1, r2, r3) on the address in LB_R1.. and waits for it to listen.
start_replica() {
  local addr_var="LB_${1^^}"
  "$bin/token-ledger" serve --listen "${!addr_var}" --database-url "$db_url" \
    >>"$LB_DIR/$1.log" 2>&1 &
  replica_pid[$1]=$!
  wait_port "${!addr_var}"
}
# The first replica applies the migrations alone; the others find them applied.
for r in r1 r2 r3; do start_replica "$r"; done
haproxy -db -f "$here/haproxy.cfg" >>"$LB_DIR/haproxy.log" 2>&1 &
haproxy_pid=$!
wait_port "$LB_LISTEN"
echo "replicas on $LB_R1 $LB_R2 $LB_R3, HAProxy on $LB_LISTEN, database $db_url"

bench() {
  "$bin/token-ledger-bench" --scenario usage --accounts 1000 --lots 1 --concurrency 64 \
    --connections 4 --warmup-secs 2 --duration-secs "$bench_secs" --ledger-url "$1" \
    | grep -E "^token-ledger bench|events/s|errors" | sed "s|^|  |"
}
echo "== throughput through HAProxy (three replicas)"
bench "http://$LB_LISTEN"
echo "== throughput against one replica directly ($LB_R1)"
bench "http://$LB_R1"

echo "== drain: checked load through HAProxy for ${load_secs} s; SIGTERM to r2 at" \
  "${drain_after} s, r2 started again at ${restart_after} s"
"$bin/token-ledger-bench" --scenario checked --ledger-url "http://$LB_LISTEN" --accounts 200 \
  --concurrency 32 --connections 4 --duration-secs "$load_secs" >"$LB_DIR/checked.log" 2>&1 &
load_pid=$!
sleep "$drain_after"
kill -TERM "${replica_pid[r2]}"
echo "$(date -u +%T) SIGTERM to r2 (pid ${replica_pid[r2]})"
wait "${replica_pid[r2]}" && echo "$(date -u +%T) r2 drained and exited 0" \
  || echo "$(date -u +%T) r2 exited with status $?"
sleep "$((restart_after - drain_after))" || true
start_replica r2
echo "$(date -u +%T) r2 started again"
status=0
wait "$load_pid" || status=$?
cat "$LB_DIR/checked.log"
echo "HAProxy's counters per replica over the whole run (stot: calls sent, hrsp_2xx: answered,"
echo "  wretr/wredis: retried / redispatched by HAProxy, status at the end):"
curl -fsS "http://$LB_STATS/stats;csv" | awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
  $1 == "ledgers" { printf "  %-8s stot %-8s hrsp_2xx %-8s wretr %-4s wredis %-4s %s\n", $2,
    $col["stot"], $col["hrsp_2xx"], $col["wretr"], $col["wredis"], $col["status"] }'
echo "token-ledger verify:"
"$bin/token-ledger" verify --database-url "$db_url" || status=$?
exit "$status"
