#!/bin/bash
# The side-by-side of the lots-and-holds commit: 5 rounds, order reversed every other round.
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
OUT=/work/wt-bench/bench-results/2026-12-01-lots-and-holds
NEW=/tmp/wtb/final/token-ledger-bench
BASE=/tmp/wtb/final/token-ledger-96b5de0
PREV=/tmp/wtb/prevbin/token-ledger-bench
COMMON="--duration-secs 10 --warmup-secs 2"
declare -A CMD
CMD[usage-lots3]="$NEW --scenario usage --accounts 10000 --concurrency 128 --lots 3 $COMMON"
CMD[usage-lots1]="$NEW --scenario usage --accounts 10000 --concurrency 128 --lots 1 $COMMON"
CMD[usage-lots3-96b5de0]="$NEW --server-bin $BASE --scenario usage --accounts 10000 --concurrency 128 --lots 3 $COMMON"
CMD[hold]="$NEW --scenario hold --accounts 10000 --concurrency 128 $COMMON"
CMD[hold-96b5de0]="$NEW --server-bin $BASE --scenario hold --accounts 10000 --concurrency 128 $COMMON"
CMD[balance-lots3]="$NEW --scenario balance --accounts 10000 --concurrency 64 --lots 3 $COMMON"
CMD[balance-cf13210]="$PREV --scenario balance --accounts 10000 --concurrency 64 $COMMON"
ORDER=(usage-lots3 usage-lots1 usage-lots3-96b5de0 hold hold-96b5de0 balance-lots3 balance-cf13210)
for r in 1 2 3 4 5; do
  if (( r % 2 == 1 )); then names=("${ORDER[@]}"); else names=(); for ((i=${#ORDER[@]}-1; i>=0; i--)); do names+=("${ORDER[$i]}"); done; fi
  for name in "${names[@]}"; do
    echo "=== round $r $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "\$ ${CMD[$name]}" | sed "s#/tmp/wtb/final/##; s#/tmp/wtb/prevbin/#cf13210/#"
    ${CMD[$name]} --json $OUT/round$r-$name.json 2>&1 | grep -v "^server:" | grep -E "^(default|seeded|analyzed)|^ +[0-9]+ calls"
  done
done
