#!/usr/bin/env bash
# Issue 12's figures: main before this session (4943f81, /tmp/base) against this session's
# commit (GetBalance queries in flight: 1 instead of 4; /tmp/new), one load generator for both,
# rounds alternating with the order reversed every other round. Echo runs print each figure as
# a share of the echo server's in the same run. The open loop runs at half of the round's
# closed-loop usage figure (the mean of both builds' in that round).
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=/work/main/bench-results/2026-12-07-read-concurrency/${SITTING:-issue12}
BENCH=${BENCH:-/tmp/new/token-ledger-bench}
mkdir -p "$out"
run() { # name server-dir flags...
  local name=$1 dir=$2; shift 2
  "$BENCH" "$@" --server-bin "$dir/token-ledger" --json "$out/$name.json" > "$out/$name.txt" 2>/dev/null
  printf '%-24s ' "$name"; grep -E "^default" "$out/$name.txt" | awk '{printf "%s %s p50 %s ms p99 %s ms ", $2, $3, $7, $11}'
  grep -oE "of echo[^;]*|machine CPU [0-9]+% busy, [0-9.]+ µs/[a-z]+" "$out/$name.txt" | tr '\n' ' '; echo
}
rate_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['runs'][0]['events_per_sec'])" "$1"; }
for round in $(seq 1 "${ROUNDS:-4}"); do
  order=(base new); (( round % 2 == 0 )) && order=(new base)
  for who in "${order[@]}"; do
    dir=/tmp/$who
    run "$who-balance64-$round" "$dir" --scenario balance --accounts 10000 --lots 3 --concurrency 64 --duration-secs 8 --warmup-secs 2 --echo
    run "$who-balance1-$round" "$dir" --scenario balance --accounts 10000 --lots 3 --concurrency 1 --connections 1 --duration-secs 8 --warmup-secs 2
    run "$who-usage128-$round" "$dir" --scenario usage --accounts 10000 --lots 3 --concurrency 128 --duration-secs 10 --warmup-secs 2 --echo
  done
  rate=$(python3 -c "import sys; print(int((float(sys.argv[1]) + float(sys.argv[2])) / 4))" \
    "$(rate_of "$out/base-usage128-$round.json")" "$(rate_of "$out/new-usage128-$round.json")")
  echo "round $round: open loop at $rate/s"
  for who in "${order[@]}"; do
    run "$who-open-$round" "/tmp/$who" --scenario usage --accounts 10000 --lots 3 --concurrency 512 --rate "$rate" --duration-secs 10 --warmup-secs 2
  done
done
