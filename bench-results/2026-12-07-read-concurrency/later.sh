#!/usr/bin/env bash
# GetBalance after the sitting's build: 0acb6f6 (/tmp/new, the sitting's `new`) against the
# session's last commit (/tmp/final: reads given up at their callers' deadlines, due accounts
# settled once), at 64 callers and at one, rounds alternating, order reversed every other round.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=/work/main/bench-results/2026-12-07-read-concurrency/later
mkdir -p "$out"
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=(new final); (( round % 2 == 0 )) && order=(final new)
  for who in "${order[@]}"; do
    for c in 64 1; do
      extra=(); [ $c = 1 ] && extra=(--connections 1)
      /tmp/final/token-ledger-bench --scenario balance --accounts 10000 --lots 3 --concurrency $c "${extra[@]}" \
        --duration-secs 8 --warmup-secs 2 --server-bin /tmp/$who/token-ledger \
        --json "$out/$who-balance$c-$round.json" > "$out/$who-balance$c-$round.txt" 2>/dev/null
      printf '%-20s ' "$who-balance$c-$round"; grep -oE "[0-9]+ calls/s|p50 +[0-9.]+ ms|machine CPU [0-9]+% busy, [0-9.]+ µs/[a-z]+" "$out/$who-balance$c-$round.txt" | tr '\n' ' '; echo
    done
  done
done
