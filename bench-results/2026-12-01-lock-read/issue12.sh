#!/usr/bin/env bash
# Issue 12's figures, main before this session (a4034df, /tmp/mainbin) against this session's
# final commit (/tmp/finalbin), one load generator ($BENCH) for both, rounds alternating with
# the order reversed every other round. Echo runs print each figure as a share of the echo
# server's in the same run.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=/work/main/bench-results/2026-12-01-lock-read/${SITTING:-issue12}
BENCH=${BENCH:-/tmp/finalbin/token-ledger-bench}
mkdir -p "$out"
run() { # name server-dir flags...
  local name=$1 dir=$2; shift 2
  "$BENCH" "$@" --server-bin "$dir/token-ledger" --json "$out/$name.json" > "$out/$name.txt" 2>/dev/null
  printf '%-28s ' "$name"; grep -E "^default" "$out/$name.txt" | awk '{printf "%s %s p50 %s ms p99 %s ms ", $2, $3, $7, $11}'
  grep -oE "of echo[^;]*|machine CPU [0-9]+% busy, [0-9.]+ µs/[a-z]+" "$out/$name.txt" | tr '\n' ' '; echo
}
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=(main final); (( round % 2 == 0 )) && order=(final main)
  for who in "${order[@]}"; do
    dir=/tmp/${who}bin
    run "$who-balance64-$round" "$dir" --scenario balance --accounts 10000 --lots 3 --concurrency 64 --duration-secs 8 --warmup-secs 2 --echo
    run "$who-balance1-$round" "$dir" --scenario balance --accounts 10000 --lots 3 --concurrency 1 --connections 1 --duration-secs 8 --warmup-secs 2
    run "$who-usage128-$round" "$dir" --scenario usage --accounts 10000 --lots 3 --concurrency 128 --duration-secs 10 --warmup-secs 2 --echo
    run "$who-open-$round" "$dir" --scenario usage --accounts 10000 --lots 3 --concurrency 512 --rate "${RATE:-4000}" --duration-secs 10 --warmup-secs 2
  done
done
