#!/usr/bin/env bash
# Where the usage figure went after the merges: the commit before pricing (a14f340), main before
# the shard-ready schema merge (b3b509f: price cache, sweep lease, multi-host pools) and main
# after it (a98672f), caller-priced and ledger-priced, alternating, three rounds.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")/sitting2
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
  run "pre-$round" /tmp/nowbin/token-ledger-bench /tmp/prebin/token-ledger
  run "pre-priced-$round" /tmp/nowbin/token-ledger-bench /tmp/prebin/token-ledger --priced
  run "now-$round" /tmp/nowbin/token-ledger-bench /tmp/nowbin/token-ledger
  run "now-priced-$round" /tmp/nowbin/token-ledger-bench /tmp/nowbin/token-ledger --priced
done
