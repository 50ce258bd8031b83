#!/usr/bin/env bash
# Stops the formation deploy/ha/start.sh started and removes $HA_DIR.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/ha/env.sh
source "$here/env.sh"
[[ -d "$HA_DIR" ]] || { echo "nothing at $HA_DIR"; exit 0; }
for name in node2 node1 monitor; do
  [[ -d "$HA_DIR/$name" ]] && as_pg pg_autoctl stop --pgdata "$HA_DIR/$name" >/dev/null 2>&1
done
# Keepers that did not stop in time, and any PostgreSQL left behind, by their recorded pids.
sleep 2
for pidfile in "$HA_DIR"/*.keeper.pid "$HA_DIR"/*/postmaster.pid; do
  [[ -f "$pidfile" ]] || continue
  pid=$(head -1 "$pidfile")
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
rm -rf "$HA_DIR"
echo "stopped; removed $HA_DIR"
