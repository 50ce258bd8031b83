#!/usr/bin/env bash
# GetBalance at 64 callers (and one caller): main (a4034df), the final commit, and the final
# commit with sqlx's ping on every acquire put back (`pingall`, a build for this comparison
# only), rounds alternating, order reversed every other round.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=/work/main/bench-results/2026-12-01-lock-read/${SITTING:-reads}
mkdir -p "$out"
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=(main final pingall); (( round % 2 == 0 )) && order=(pingall final main)
  for who in "${order[@]}"; do
    for c in 64 1; do
      extra=(); [ $c = 1 ] && extra=(--connections 1)
      /tmp/finalbin/token-ledger-bench --scenario balance --accounts 10000 --lots 3 --concurrency $c "${extra[@]}" \
        --duration-secs 8 --warmup-secs 2 --server-bin /tmp/${who}bin/token-ledger \
        --json "$out/$who-balance$c-$round.json" > "$out/$who-balance$c-$round.txt" 2>/dev/null
      printf '%-22s ' "$who-balance$c-$round"; grep -E "^default" "$out/$who-balance$c-$round.txt" | awk '{printf "%s/s p50 %s ", $2, $7}'
      grep -oE "machine CPU [0-9]+% busy, [0-9.]+ µs/[a-z]+" "$out/$who-balance$c-$round.txt"
    done
  done
done
