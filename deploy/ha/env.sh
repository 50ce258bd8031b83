# shellcheck shell=bash disable=SC2034
# Settings and helpers shared by the deploy/ha scripts (sourced, not run).
HA_DIR="${HA_DIR:-/tmp/token-ledger-ha}"
HA_USER="${HA_USER:-postgres}"
HA_PORT_BASE="${HA_PORT_BASE:-55431}"
HA_MONITOR_PORT="$HA_PORT_BASE"
HA_DBNAME="${HA_DBNAME:-ledger}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
HA_MONITOR_URL="postgres://autoctl_node@127.0.0.1:$HA_MONITOR_PORT/pg_auto_failover?sslmode=disable"
# libpq's multi-host form, as `pg_autoctl show uri --formation default` prints it.
HA_DATABASE_URL="postgres://postgres@127.0.0.1:$((HA_PORT_BASE + 1)),127.0.0.1:$((HA_PORT_BASE + 2))/$HA_DBNAME?target_session_attrs=read-write"

# Runs a command as the cluster owner, with pg_autoctl's state files kept under $HA_DIR.
as_pg() {
  runuser -u "$HA_USER" -- env PATH="$PG_BIN:$PATH" \
    XDG_CONFIG_HOME="$HA_DIR/config" XDG_DATA_HOME="$HA_DIR/share" \
    XDG_RUNTIME_DIR="$HA_DIR/run" "$@"
}

# SQL on the monitor.
monitor_sql() {
  as_pg psql -X -At -h 127.0.0.1 -p "$HA_MONITOR_PORT" -d pg_auto_failover -c "$1"
}

# The formation as the monitor sees it (`pg_autoctl show state`).
ha_state() {
  as_pg pg_autoctl show state --monitor "$HA_MONITOR_URL"
}

# Whether node $1 (node1, node2) is reported and assigned state $2.
node_in_state() {
  [[ "$(monitor_sql "SELECT reportedstate || '/' || goalstate FROM pgautofailover.node WHERE nodename = '$1'")" == "$2/$2" ]]
}

# The port of the node the monitor has as primary (or single / wait_primary), if any.
ha_primary_port() {
  monitor_sql "SELECT nodeport FROM pgautofailover.node \
    WHERE reportedstate IN ('primary', 'wait_primary', 'single') \
      AND goalstate = reportedstate LIMIT 1"
}

# Runs "$@" once a second until it succeeds, at most $2 times.
wait_for() {
  local what="$1" tries="$2"
  shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "timed out waiting for $what" >&2
  return 1
}
