#!/bin/bash
# Supplement: the fresh-database regime (no ANALYZE after seeding, as every earlier figure), and balance with the pre-lots seed.
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
OUT=/work/wt-bench/bench-results/2026-12-01-lots-and-holds
NEW=/tmp/wtb/final/token-ledger-bench
PREV=/tmp/wtb/prevbin/token-ledger-bench
COMMON="--duration-secs 10 --warmup-secs 2"
declare -A CMD
CMD[usage-lots3-no-analyze]="$NEW --scenario usage --accounts 10000 --concurrency 128 --lots 3 --no-analyze $COMMON"
CMD[usage-lots1-no-analyze]="$NEW --scenario usage --accounts 10000 --concurrency 128 --lots 1 --no-analyze $COMMON"
CMD[balance-lots1-no-analyze]="$NEW --scenario balance --accounts 10000 --concurrency 64 --lots 1 --no-analyze $COMMON"
CMD[balance-cf13210]="$PREV --scenario balance --accounts 10000 --concurrency 64 $COMMON"
ORDER=(usage-lots3-no-analyze usage-lots1-no-analyze balance-lots1-no-analyze balance-cf13210)
for r in 1 2 3; do
  if (( r % 2 == 1 )); then names=("${ORDER[@]}"); else names=(); for ((i=${#ORDER[@]}-1; i>=0; i--)); do names+=("${ORDER[$i]}"); done; fi
  for name in "${names[@]}"; do
    echo "=== round $r $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "\$ ${CMD[$name]}" | sed "s#/tmp/wtb/final/##; s#/tmp/wtb/prevbin/#cf13210/#"
    ${CMD[$name]} --json $OUT/b-round$r-$name.json 2>&1 | grep -v "^server:" | grep -E "^(default|seeded|analyzed)|^ +[0-9]+ calls"
  done
done
