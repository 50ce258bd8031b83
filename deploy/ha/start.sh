#!/usr/bin/env bash
# Starts a pg_auto_failover formation on loopback: a monitor, a primary and a synchronous
# secondary, each a PostgreSQL 15 cluster run by its own `pg_autoctl` keeper, everything under
# $HA_DIR (default /tmp/token-ledger-ha), owned by the `postgres` OS user (PostgreSQL refuses to
# run as root). Installs Debian's postgresql-15-auto-failover with apt-get if pg_autoctl is
# missing. Prints the multi-host DATABASE_URL the ledger connects with. Stop with deploy/ha/stop.sh.
#
#   deploy/ha/start.sh            # ports 55431 (monitor), 55432 (node1), 55433 (node2)
#   HA_DIR=/tmp/x HA_PORT_BASE=56431 deploy/ha/start.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/ha/env.sh
source "$here/env.sh"

if ! command -v pg_autoctl >/dev/null; then
  echo "installing postgresql-15-auto-failover (Debian) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-auto-failover >/dev/null
fi
pg_autoctl version | head -1

if [[ -e "$HA_DIR" ]]; then
  echo "$HA_DIR exists: run deploy/ha/stop.sh first" >&2
  exit 1
fi
mkdir -p "$HA_DIR/log"
chown -R "$HA_USER" "$HA_DIR"

# Starts a keeper in the background (it starts its PostgreSQL and follows the monitor).
run_keeper() {
  local name="$1"
  as_pg nohup pg_autoctl run --pgdata "$HA_DIR/$name" >>"$HA_DIR/log/$name.log" 2>&1 &
  echo $! >"$HA_DIR/$name.keeper.pid"
}

echo "monitor on 127.0.0.1:$HA_MONITOR_PORT"
as_pg pg_autoctl create monitor --pgdata "$HA_DIR/monitor" --pgport "$HA_MONITOR_PORT" \
  --hostname 127.0.0.1 --auth trust --no-ssl >>"$HA_DIR/log/create.log" 2>&1
run_keeper monitor
wait_for "the monitor" 60 monitor_sql 'SELECT 1'

# pg_auto_failover's defaults: the monitor calls a node failed after
# node_considered_unhealthy_timeout (20 s) and failed health checks (every 5 s, 2 retries 2 s
# apart); it then promotes the secondary but keeps it from accepting writes (stop_replication)
# until the old primary has had primary_demote_timeout (30 s) to demote itself, which a keeper
# that lost the monitor and its standby does after network_partition_timeout (20 s): no split
# brain even when the old primary is alive behind a partition. HA_FAST_FAILOVER=1 (the default
# here) shortens all of these, keeping the keepers' partition timeout (4 s) under the demote
# timeout (8 s), so the order that prevents split brain is kept; HA_FAST_FAILOVER=0 keeps the
# defaults (a write outage of about 40-50 s).
fast="${HA_FAST_FAILOVER:-1}"
if [[ "$fast" == 1 ]]; then
  as_pg psql -X -q -h 127.0.0.1 -p "$HA_MONITOR_PORT" -d pg_auto_failover <<'SQL'
ALTER SYSTEM SET pgautofailover.health_check_period = 1000;
ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000;
ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1;
ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500;
ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 3000;
ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 8000;
SELECT pg_reload_conf();
SQL
fi
echo "monitor settings: $(monitor_sql "SELECT string_agg(replace(name, 'pgautofailover.', '') \
  || '=' || setting || coalesce(unit, ''), ' ' ORDER BY name) FROM pg_settings \
  WHERE name IN ('pgautofailover.node_considered_unhealthy_timeout', \
    'pgautofailover.primary_demote_timeout', 'pgautofailover.health_check_period')")"

for i in 1 2; do
  port=$((HA_PORT_BASE + i))
  echo "node$i on 127.0.0.1:$port"
  as_pg pg_autoctl create postgres --pgdata "$HA_DIR/node$i" --pgport "$port" \
    --hostname 127.0.0.1 --name "node$i" --dbname "$HA_DBNAME" --auth trust --no-ssl \
    --monitor "$HA_MONITOR_URL" >>"$HA_DIR/log/create.log" 2>&1
  if [[ "$fast" == 1 ]]; then
    as_pg pg_autoctl config set --pgdata "$HA_DIR/node$i" timeout.network_partition_timeout 4 \
      >/dev/null
  fi
  run_keeper "node$i"
  # The secondary is cloned from the primary: wait until the primary is one before adding it.
  if [[ $i == 1 ]]; then wait_for "node1 to run alone" 90 node_in_state node1 single; fi
done
wait_for "node2 to be secondary" 180 node_in_state node2 secondary
# The primary reaches `primary` (synchronous replication on) once the secondary caught up.
wait_for "node1 to be primary" 60 node_in_state node1 primary

ha_state
primary_port=$(ha_primary_port)
echo "synchronous_standby_names on the primary ($primary_port): $(as_pg psql -X -At -h 127.0.0.1 \
  -p "$primary_port" -U postgres -d "$HA_DBNAME" -c 'SHOW synchronous_standby_names')"
echo "DATABASE_URL=$HA_DATABASE_URL"
