#!/usr/bin/env bash
# Accounts the directory knows locked with SELECT … FOR UPDATE instead of the upsert: the commit
# before pricing (a14f340), main (a98672f) and main with the change, all ledger-priced except
# the first, alternating, three rounds.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")/sitting3
mkdir -p "$out"
common=(--scenario usage --accounts 10000 --concurrency 128 --duration-secs 10 --warmup-secs 2)
run() { # name bench server [flags]
  local name=$1 bench=$2 server=$3; shift 3
  "$bench" "${common[@]}" "$@" --server-bin "$server" --json "$out/$name.json" > "$out/$name.txt" 2>/dev/null
  printf '%-22s ' "$name"; grep -E "events/s" "$out/$name.txt" | awk '{print $2, "events/s p99", $13, "ms"}' | tr '\n' ' '
  grep -oE "storage [0-9]+ B/usage row|balances exact" "$out/$name.txt" | tr '\n' ' '; echo
}
for round in 1 2 3; do
  run "before-$round" /tmp/prevbin/token-ledger-bench /tmp/prevbin/token-ledger
  run "main-priced-$round" /tmp/nowbin/token-ledger-bench /tmp/nowbin/token-ledger --priced
  run "lock-priced-$round" /tmp/nowbin/token-ledger-bench /tmp/lockbin/token-ledger --priced
done
