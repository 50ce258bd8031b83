#!/usr/bin/env bash
# Issue 14's usage target, side by side in one sitting: the commit before pricing (a14f340,
# binaries in /tmp/prevbin) against this commit (binaries in /tmp/nowbin), caller-priced and
# ledger-priced, alternating, three rounds.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")
common=(--scenario usage --accounts 10000 --concurrency 128 --duration-secs 10 --warmup-secs 2)
for round in 1 2 3; do
  /tmp/prevbin/token-ledger-bench "${common[@]}" --server-bin /tmp/prevbin/token-ledger \
    --json "$out/before-$round.json" > "$out/before-$round.txt"
  /tmp/nowbin/token-ledger-bench "${common[@]}" --server-bin /tmp/nowbin/token-ledger \
    --json "$out/now-$round.json" > "$out/now-$round.txt"
  /tmp/nowbin/token-ledger-bench "${common[@]}" --priced --server-bin /tmp/nowbin/token-ledger \
    --json "$out/now-priced-$round.json" > "$out/now-priced-$round.txt"
  for f in before now now-priced; do
    printf '%s round %s: ' "$f" "$round"
    grep -E "events/s|balances" "$out/$f-$round.txt" | tr '\n' ' '; echo
  done
done
