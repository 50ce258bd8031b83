#!/usr/bin/env bash
# The failover scenario: a fresh pg_auto_failover formation (deploy/ha/start.sh), the ledger on
# its multi-host URL, a checked load of Grants (token-ledger-bench --scenario checked: every call
# retried with its idempotency key until acknowledged, then everything read back), and, after
# HA_KILL_AFTER_SECS, the primary stopped hard (`pg_autoctl stop --immediate`: its PostgreSQL
# and its keeper gone at once, as a crashed machine). The monitor promotes the secondary, the
# ledger finds it on its own, the load goes on. Prints the checker's verdict (acknowledged,
# lost, doubled, write outage), the time to promotion, and `token-ledger verify`.
#
#   cargo build --release && deploy/ha/failover.sh
#   HA_LOAD_SECS=40 HA_KILL_AFTER_SECS=10 HA_CONCURRENCY=32 HA_KEEP=1 deploy/ha/failover.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=deploy/ha/env.sh
source "$here/env.sh"
bin="${BIN_DIR:-$repo/target/release}"
load_secs="${HA_LOAD_SECS:-40}"
kill_after="${HA_KILL_AFTER_SECS:-10}"
concurrency="${HA_CONCURRENCY:-32}"
listen="${HA_LEDGER_LISTEN:-127.0.0.1:55480}"
for b in token-ledger token-ledger-bench; do
  [[ -x "$bin/$b" ]] || { echo "$bin/$b missing: cargo build --release first" >&2; exit 1; }
done

"$here/stop.sh" >/dev/null
"$here/start.sh"
work="$HA_DIR/scenario"
mkdir -p "$work"
ledger_pid=
cleanup() {
  [[ -n "$ledger_pid" ]] && kill "$ledger_pid" 2>/dev/null && wait "$ledger_pid" 2>/dev/null
  if [[ "${HA_KEEP:-0}" != 1 ]]; then "$here/stop.sh"; fi
}
trap cleanup EXIT

echo "ledger on $listen, DATABASE_URL=$HA_DATABASE_URL"
"$bin/token-ledger" serve --listen "$listen" --database-url "$HA_DATABASE_URL" \
  >"$work/ledger.log" 2>&1 &
ledger_pid=$!
wait_for "the ledger" 30 bash -c "echo >/dev/tcp/${listen%:*}/${listen##*:}"

echo "checked load: $concurrency callers for ${load_secs} s; primary stopped at ${kill_after} s"
"$bin/token-ledger-bench" --scenario checked --ledger-url "http://$listen" \
  --accounts 200 --concurrency "$concurrency" --connections 4 --duration-secs "$load_secs" \
  >"$work/load.log" 2>&1 &
load_pid=$!

sleep "$kill_after"
old_port=$(ha_primary_port)
old_node=$(monitor_sql "SELECT nodename FROM pgautofailover.node WHERE nodeport = $old_port")
killed_at=$(date +%s.%N)
as_pg pg_autoctl stop --immediate --pgdata "$HA_DIR/$old_node"
echo "$(date -u +%T) stopped $old_node (port $old_port) with pg_autoctl stop --immediate"

# The monitor's view, each change with its time since the stop, until a node other than the
# old primary is a writable primary again (wait_primary: promoted, synchronous replication off
# while it has no standby).
states() {
  monitor_sql "SELECT string_agg(nodename || ' ' || reportedstate || '/' || goalstate, ', ' \
    ORDER BY nodename) FROM pgautofailover.node"
}
last=
promoted=
for _ in $(seq 600); do
  now=$(states || true)
  if [[ -n "$now" && "$now" != "$last" ]]; then
    echo "  +$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $killed_at }") s  $now"
    last="$now"
  fi
  port=$(ha_primary_port || true)
  if [[ -n "$port" && "$port" != "$old_port" ]]; then
    promoted=$(date +%s.%N)
    break
  fi
  sleep 0.2
done
if [[ -z "$promoted" ]]; then
  echo "no promotion within 120 s" >&2
  ha_state
  exit 1
fi
echo "$(date -u +%T) the monitor has the node on port $port as primary:" \
  "$(awk "BEGIN { printf \"%.1f\", $promoted - $killed_at }") s after the stop"

status=0
wait "$load_pid" || status=$?
cat "$work/load.log"
echo "ledger's view of the failover:"
grep -E "lost the database|host switched|answers again|health" "$work/ledger.log" \
  | sed 's/^/  /' | cut -c1-220 | head -12
ha_state
echo "token-ledger verify:"
"$bin/token-ledger" verify --database-url "$HA_DATABASE_URL" || status=$?
exit "$status"
