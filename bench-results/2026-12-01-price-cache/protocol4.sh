#!/usr/bin/env bash
# The price cache as fixed (count after the locks, 09d6d12) against the commit before pricing
# (a14f340): caller-priced and ledger-priced, alternating, three rounds.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")/sitting4
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
  run "fixed-$round" /tmp/fixbin/token-ledger-bench /tmp/fixbin/token-ledger
  run "fixed-priced-$round" /tmp/fixbin/token-ledger-bench /tmp/fixbin/token-ledger --priced
done
